import ArgumentParser
import PMLL
#if canImport(Glibc)
import Glibc
#endif

/// `pmll flock`: util-linux flock(1) (2.38) option for option and exit status for exit status,
/// on the PMLL lock named after FILE's canonical path. Its arguments are parsed here the way
/// flock's getopt does ("+sexnoFuw:E:hV", long-option prefixes), not by ArgumentParser, so
/// that a script can switch by changing one word.
struct FlockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flock",
        abstract: "Drop-in for flock(1): run COMMAND holding the PMLL lock of FILE.",
        discussion: FlockOptions.help
    )

    @Argument(parsing: .captureForPassthrough, help: "flock(1) options, FILE, then COMMAND [ARG...] or -c COMMAND.")
    var arguments: [String] = []

    func run() throws {
        let options: FlockOptions
        do {
            options = try FlockOptions.parse(arguments)
        } catch {
            let usage = error
            printError("pmll: \(usage.message)")
            if usage.tryHelp { printError("Try 'pmll flock --help' for more information.") }
            Glibc.exit(ExitStatus.usage)
        }
        if options.help {
            print("Usage:\n pmll flock [options] <file>|<directory> <command> [<argument>...]\n pmll flock [options] <file>|<directory> -c <command>\n")
            print(FlockOptions.help)
            Glibc.exit(0)
        }
        if options.version {
            print("pmll flock (PMLL), compatible with flock from util-linux 2.38.1")
            Glibc.exit(0)
        }
        let status = try FlockRun(options: options).run()
        BackgroundChecks.finish()
        Glibc.exit(status)
    }
}

/// The parsed command line of `pmll flock`.
struct FlockOptions {
    struct Usage: Error {
        let message: String
        var tryHelp = false
    }

    var shared = false, unlock = false, nonblock = false, close = false, noFork = false, verbose = false
    var help = false, version = false
    var timeout: Double?
    var conflictExitCode: Int32 = 1
    var file = ""
    var command: [String] = []
    /// COMMAND came as -c STRING (run by the shell).
    var shellCommand = false

    static let help = """
        Options (as flock(1)):
         -s, --shared             get a shared lock
         -x, -e, --exclusive      get an exclusive lock (default)
         -u, --unlock             run COMMAND without taking the lock (flock's unlock of a new descriptor)
         -n, --nb, --nonblock     fail rather than wait
         -w, --wait, --timeout SECS  wait at most SECS (fractions allowed; 0 is --nonblock)
         -E, --conflict-exit-code N  exit status on conflict or timeout (default 1)
         -o, --close              accepted: COMMAND never inherits a lock descriptor here
         -c, --command STRING     run STRING with $SHELL -c (else /bin/sh)
         -F, --no-fork            exec COMMAND without forking: the lock is held by COMMAND's process
                                  and released when it exits (not reported as an owner death)
             --verbose            say how long getting the lock took and what is executed
         -h, --help, -V, --version

        The lock is the PMLL lock named after FILE's canonical path (FILE is created if missing, as \
        flock does), so ./x and /abs/x contend, in the pool of --pool's rules ($PMLL_POOL, else the \
        per-user default). On top of flock(1): COMMAND gets PMLL_PREVIOUS_OWNER_DIED=1 if the previous \
        exclusive holder died, a waiting flock names the holder on stderr (and on timeout), shared \
        locks do not starve a waiting writer, and `pmll status` shows holders, readers and statistics.
        The pool is chosen with PMLL_POOL (flock has no --pool option).

        The file-descriptor form (`flock 9`) is not supported: a pool lock belongs to a process, and \
        `pmll flock` exits right after taking it, so nothing would hold it. Use the FILE COMMAND form.

        Exit status: as flock(1): the conflict exit code (default 1) on conflict or timeout; 64 usage \
        error; 66 FILE cannot be opened (73 read-only or full file system); 69 COMMAND cannot be \
        executed; otherwise COMMAND's status (128+N if killed by signal N). PMLL's own failures use \
        pmll's codes (65 bad pool, 71 system error, 73 pool full, 77 permission denied).
        """

    private static let long: [(name: String, short: Character)] = [
        ("shared", "s"), ("exclusive", "x"), ("unlock", "u"), ("nonblocking", "n"), ("nonblock", "n"), ("nb", "n"),
        ("timeout", "w"), ("wait", "w"), ("conflict-exit-code", "E"), ("close", "o"), ("no-fork", "F"),
        ("verbose", "v"), ("help", "h"), ("version", "V"),
    ]

    static func parse(_ args: [String]) throws(Usage) -> FlockOptions {
        var o = FlockOptions()
        guard !args.isEmpty else { throw Usage(message: "not enough arguments", tryHelp: true) }
        var i = 0
        func value(_ option: String, inline: Substring?) throws(Usage) -> String {
            if let inline, !inline.isEmpty { return String(inline) }
            i += 1
            guard i < args.count else { throw Usage(message: "option '\(option)' requires an argument", tryHelp: true) }
            return args[i]
        }
        func apply(_ short: Character, _ option: String, inline: Substring?) throws(Usage) -> Bool {
            switch short {
            case "s": o.shared = true
            case "x", "e": o.shared = false
            case "u": o.unlock = true
            case "n": o.nonblock = true
            case "o": o.close = true
            case "F": o.noFork = true
            case "v": o.verbose = true
            case "h": o.help = true
            case "V": o.version = true
            case "w":
                let text = try value(option, inline: inline)
                guard let seconds = Double(text), seconds >= 0, seconds.isFinite else { throw Usage(message: "invalid timeout value: '\(text)'") }
                o.timeout = seconds
                return true
            case "E":
                let text = try value(option, inline: inline)
                guard let code = Int32(text), (0...255).contains(code) else { throw Usage(message: "exit code out of range (expected 0 to 255)") }
                o.conflictExitCode = code
                return true
            default:
                throw Usage(message: "invalid option -- '\(short)'", tryHelp: true)
            }
            return false
        }
        while i < args.count {
            let arg = args[i]
            if arg == "--" { i += 1; break }
            if arg.hasPrefix("--") {
                let body = arg.dropFirst(2)
                let name = body.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
                let inline: Substring? = body.contains("=") ? body[body.index(after: body.firstIndex(of: "=")!)...] : nil
                let exact = long.first { $0.name == name }
                let prefixed = long.filter { $0.name.hasPrefix(name) }
                guard !name.isEmpty, let match = exact ?? (Set(prefixed.map(\.short)).count == 1 ? prefixed.first : nil) else {
                    throw Usage(message: "unrecognized option '\(arg)'", tryHelp: true)
                }
                if inline != nil && !"wE".contains(match.short) { throw Usage(message: "option '--\(match.name)' doesn't allow an argument", tryHelp: true) }
                _ = try apply(match.short, arg, inline: inline)
                i += 1
                continue
            }
            if arg.hasPrefix("-") && arg.count > 1 {
                var rest = arg.dropFirst()
                while let c = rest.first {
                    rest = rest.dropFirst()
                    if try apply(c, "-\(c)", inline: rest) { break }
                }
                i += 1
                continue
            }
            break
        }
        if o.help || o.version { return o }
        if o.noFork && o.close { throw Usage(message: "the --no-fork and --close options are incompatible") }
        let positional = Array(args[i...])
        guard let file = positional.first else { throw Usage(message: "missing file descriptor, file or directory") }
        if positional.count == 1 {
            if Int32(file) != nil {
                throw Usage(message: "the file-descriptor form (flock \(file)) is not supported: a pool lock would be released when pmll exits; use pmll flock FILE COMMAND")
            }
            throw Usage(message: "bad file descriptor: '\(file)'")
        }
        o.file = file
        if positional[1] == "-c" || positional[1] == "--command" {
            guard positional.count == 3 else { throw Usage(message: "\(positional[1]) requires exactly one command argument") }
            let shell = getenv("SHELL").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 } ?? "/bin/sh"
            o.command = [shell, "-c", positional[2]]
            o.shellCommand = true
        } else {
            o.command = Array(positional.dropFirst())
        }
        return o
    }
}

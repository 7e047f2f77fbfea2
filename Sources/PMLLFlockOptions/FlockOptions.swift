#if canImport(Glibc)
import Glibc
#endif

/// `pmll flock`'s command line, parsed as util-linux flock(1) parses it: shared by the local
/// `pmll` and by `pmll-etcd`, so that both accept exactly the same options.
/// The parsed command line of `pmll flock`.
public struct FlockOptions: Sendable {
    public struct Usage: Error {
        public let message: String
        public var tryHelp = false
    }

    public var shared = false, unlock = false, nonblock = false, close = false, noFork = false, verbose = false
    public var help = false, version = false
    public var timeout: Double?
    public var conflictExitCode: Int32 = 1
    public var file = ""
    public var command: [String] = []
    /// COMMAND came as -c STRING (run by the shell).
    public var shellCommand = false

    public static let help = """
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

    public static func parse(_ args: [String]) throws(Usage) -> FlockOptions {
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

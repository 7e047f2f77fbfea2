import ArgumentParser
import PMLL
import PMLLFlockOptions
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

    func run() throws { try Self.run(arguments) }

    /// Also the fast path's entry (``FastPath``): flock's own parser, no ArgumentParser.
    static func run(_ arguments: [String]) throws -> Never {
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

import PMLL
#if canImport(Glibc)
import Glibc
#endif

/// `pmll lock` and `pmll flock` in their usual forms, run without swift-argument-parser.
///
/// Scripts start these in loops, and parsing with ArgumentParser (reflection, conformance
/// lookups, a second parse for completion requests) took about a quarter of such a process.
/// `flock` has its own parser anyway (flock(1)'s getopt rules). For `lock`, every form this
/// parser is not sure of (help, an unknown or repeated option, a value it cannot read, a
/// missing NAME or COMMAND) returns nil and goes to ArgumentParser, which stays the one place
/// that explains a usage error, so messages and statuses are the same either way.
enum FastPath {
    static func command(_ arguments: [String]) -> (() throws -> Never)? {
        guard arguments.count > 1 else { return nil }
        let rest = Array(arguments.dropFirst(2))
        switch arguments[1] {
        case "flock":
            return { try FlockCommand.run(rest) }
        case "lock":
            guard let run = lockRun(rest) else { return nil }
            return {
                let status = try run.run()
                BackgroundChecks.finish()
                exit(status)
            }
        default:
            return nil
        }
    }

    /// `[--pool P] [--config F] [--group-shared] [--timeout S] [--level L] [--shared|--exclusive] NAME -- COMMAND...`,
    /// options in any order before `--`, each at most once, `--opt=value` or `--opt value`.
    static func lockRun(_ arguments: [String]) -> LockRun? {
        guard let terminator = arguments.firstIndex(of: "--"), terminator + 1 < arguments.count else { return nil }
        var pool = PoolChoice()
        var name: String?, level: LockLevel?, timeout: Double?, mode: Bool?
        var seen: [String] = []   // a handful: an array is cheaper to start than a Set
        var index = 0
        while index < terminator {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("-") else {
                guard name == nil else { return nil }
                name = argument
                continue
            }
            var option = argument, value: String?
            if let equals = argument.firstIndex(of: "=") {
                option = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            guard !seen.contains(option) else { return nil }
            seen.append(option)
            switch option {
            case "--shared", "--exclusive", "--group-shared":
                guard value == nil else { return nil }
                if option == "--group-shared" { pool.groupShared = true; continue }
                guard mode == nil else { return nil }
                mode = option == "--shared"
                continue
            case "--pool", "--config", "--timeout", "--level":
                if value == nil {
                    guard index < terminator else { return nil }
                    value = arguments[index]
                    index += 1
                }
            default:
                return nil
            }
            guard let value, !value.hasPrefix("-") else { return nil }
            switch option {
            case "--pool": pool.pool = value
            case "--config": pool.config = value
            case "--timeout":
                guard let seconds = Double(value), !seconds.isNaN, seconds >= 0 else { return nil }
                timeout = seconds
            default:
                guard let parsed = LockLevel(argument: value) else { return nil }
                level = parsed
            }
        }
        guard let name else { return nil }
        return LockRun(pool: pool, name: name, level: level, shared: mode ?? false, timeout: timeout,
                       command: Array(arguments[(terminator + 1)...]))
    }
}

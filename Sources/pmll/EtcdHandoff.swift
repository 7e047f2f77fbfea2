#if canImport(Glibc)
import Glibc
#endif

/// Commands on an etcd pool (`--pool etcd://...` or `PMLL_POOL=etcd://...`) are run by
/// `pmll-etcd`, installed next to `pmll`: this executable then never loads the networking
/// stack and Foundation that the etcd backend needs (start-up cost, issue of `pmll lock` in
/// shell loops). The hand-off is an exec, so the PID, signals and exit status stay the
/// caller's.
enum EtcdHandoff {
    static func runIfEtcdPool() {
        guard let pool = poolArgument() ?? getenv("PMLL_POOL").map({ String(cString: $0) }), pool.hasPrefix("etcd://") else { return }
        var path = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &path, path.count - 1)
        guard length > 0 else { PMLLCommand.fail("cannot find this executable to locate pmll-etcd", status: ExitStatus.system) }
        let exe = String(decoding: path[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let helper = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/pmll-etcd"
        var argv = RawArguments.all().map { strdup($0) }
        argv[0] = strdup(helper)
        argv.append(nil)
        execv(helper, argv)
        PMLLCommand.fail("etcd pools need pmll-etcd next to pmll (\(helper)): \(String(cString: strerror(errno)))", status: 69)
    }

    /// The value of `--pool` before `--` (the subcommand's option), if any. `flock` has no
    /// `--pool` (its pool is `$PMLL_POOL`, as flock(1) has no such option) and its COMMAND
    /// needs no `--`, so its arguments are never read for one.
    private static func poolArgument() -> String? {
        let args = CommandLine.arguments
        if args.count > 1 && args[1] == "flock" { return nil }
        var index = 1
        while index < args.count {
            let arg = args[index]
            if arg == "--" { return nil }
            if arg == "--pool", index + 1 < args.count { return args[index + 1] }
            if arg.hasPrefix("--pool=") { return String(arg.dropFirst(7)) }
            index += 1
        }
        return nil
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Where a pool lives when the caller names none: `$PMLL_POOL`, else the per-user
/// `$XDG_STATE_HOME/pmll/default.pool` (`~/.local/state/pmll/default.pool`).
public enum PoolPath {
    public static func resolve(_ explicit: String?) -> String {
        if let explicit { return explicit }
        if let env = Knob.pool.value, !env.isEmpty { return env }
        return defaultPath
    }

    /// The embedded default pool of the calling user.
    public static var defaultPath: String {
        let state: String
        if let xdg = environment("XDG_STATE_HOME"), xdg.hasPrefix("/") {
            state = xdg
        } else {
            state = homeDirectory + "/.local/state"
        }
        return state + "/pmll/default.pool"
    }

    package static var homeDirectory: String {
        if let home = environment("HOME"), home.hasPrefix("/") { return home }
        if let pw = getpwuid(geteuid()), let dir = pw.pointee.pw_dir { return String(cString: dir) }
        return "/tmp"
    }

    package static func environment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    /// Creates the directories above `path` (mode 0700), as `mkdir -p` would.
    static func createParentDirectories(of path: String) throws(PMLLError) {
        var prefix = ""
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        for part in parts {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw SystemCall.fileError(.current, path: prefix, operation: "create directory")
            }
        }
    }

    /// The target of `path` if it is a symbolic link whose target does not exist.
    static func danglingSymlinkTarget(_ path: String) -> String? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFLNK, stat(path, &st) != 0, errno == ENOENT else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buffer, Int(PATH_MAX))
        guard n > 0 else { return "?" }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

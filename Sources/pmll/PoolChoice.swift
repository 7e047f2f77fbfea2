import PMLL

/// Which pool a command works on and how: `--pool`, `--config`, `--group-shared`. A plain value
/// so that the fast path (``FastPath``) opens pools exactly as the parsed commands do.
struct PoolChoice {
    var pool: String?
    var config: String?
    var groupShared = false

    /// The effective configuration, this command's --pool and --group-shared included.
    func configuration() throws(PMLLError) -> Configuration {
        var configuration = try Configuration.load(file: config)
        if let pool { try configuration.override("pool.path", pool, source: .flag("--pool")) }
        if groupShared { try configuration.override("pool.group_shared", "true", source: .flag("--group-shared")) }
        return configuration
    }

    /// The pool path the command works on (without opening it).
    func path() throws(PMLLError) -> String? { try configuration().poolPath }

    func open(create: Bool = true, label: String? = nil) throws(PMLLError) -> Pool {
        try open(configuration(), create: create, label: label)
    }

    private func open(_ configuration: Configuration, create: Bool = true, label: String? = nil, unmapsAtClose: Bool = true) throws(PMLLError) -> Pool {
        var options = configuration.poolOptions
        options.create = create
        options.processLabel = label
        options.unmapsAtClose = unmapsAtClose
        return try Pool.open(path: configuration.poolPath, options: options)
    }

    /// For commands that only read (status, check, state get|list): read-write when this user
    /// may write the file, else a read-only attach (no slot registered, no byte written), so
    /// that a user who can only read a pool still sees it.
    func openForReading() throws(PMLLError) -> Pool {
        do {
            return try open(create: false)
        } catch {
            switch error {
            case .permissionDenied, .foreignOwner:
                let configuration = try configuration()
                var options = configuration.poolOptions
                options.create = false
                options.readOnly = true
                return try Pool.open(path: configuration.poolPath, options: options)
            default:
                throw error
            }
        }
    }

    /// For commands that run as long as a COMMAND does: the pool, checked in the background
    /// at the configured `check.interval_s` (the checker thread ends with the process).
    func openLongRunning(label: String? = nil, exitsAfter: Bool = false) throws(PMLLError) -> Pool {
        let configuration = try configuration()
        let pool = try open(configuration, label: label, unmapsAtClose: !exitsAfter)
        try BackgroundChecks.start(pool, configuration)
        return pool
    }
}

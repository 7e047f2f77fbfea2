import PMLLCore

/// The exit statuses live in the core, shared with `pmll-etcd`.
typealias ExitStatus = PMLLCore.ExitStatus

public import PMLLCore
public import PMLLQueues
#if canImport(Glibc)
import Glibc
#endif

/// The settings an operator gives PMLL in a file, with where each effective value came from.
///
/// Order, lowest first: built-in defaults; the system file `/etc/pmll/config.json`; the user's
/// file `$XDG_CONFIG_HOME/pmll/config.json` (else `~/.config/pmll/config.json`) — or, instead
/// of both, the file named by `--config` or `$PMLL_CONFIG`; environment variables
/// (`PMLL_POOL`); then a command's own flags (``override(_:_:source:)``). A bad file is an
/// error naming the file, the line and the key, never a silent default (Docs/Operations.md).
public struct Configuration: Sendable {
    public enum Source: Sendable, Equatable, CustomStringConvertible {
        case defaultValue
        case file(String)
        case environment(String)
        case flag(String)

        public var description: String {
            switch self {
            case .defaultValue: "default"
            case let .file(path): path
            case let .environment(name): "$" + name
            case let .flag(name): name
            }
        }
    }

    /// One effective setting, as `pmll config show` prints it.
    public struct Setting: Sendable, Equatable {
        public let key: String
        public let value: String
        public let source: Source
    }

    /// The pool when none is named (nil: the per-user default).
    public var poolPath: String?
    /// How pools are created (sizes, capacities) and waited on.
    public var poolOptions = PoolOptions()
    /// Hardened queues' default timeout and retries.
    public var queue = QueueConfiguration()
    /// Where `pmll backup` writes rotated backups when no destination is given, and how many it keeps.
    public var backupDirectory: String?
    public var backupKeep = 7
    /// How often long-running `pmll` commands take a rotated backup into `backupDirectory`
    /// (shared between processes: one per interval); nil: never.
    public var backupInterval: Duration?
    /// How often long-running `pmll` commands (and programs that call
    /// ``Pool/startScheduledChecks(every:)`` with it) check the pool; nil: never.
    public var checkInterval: Duration?
    /// What `pmll recover` and programs that pass it to ``Pool/recover(handlers:policies:dryRun:timeout:)``
    /// do with operations abandoned by dead processes.
    public var recovery = RecoveryPolicies()
    /// Where each setting that is not a default came from. A handful of entries: an array,
    /// not a dictionary, because a `[String: Source]` was the first generic type `pmll lock`
    /// instantiated that needs a conformance (`String: Hashable`), and the runtime's first
    /// conformance lookup walks every conformance record of the executable (about 3 % of a
    /// `pmll lock` process; Docs/Benchmarks.md, issue 23).
    private var sources: [(key: String, source: Source)] = []

    public init() {}

    public static let systemFile = "/etc/pmll/config.json"

    public static var userFile: String {
        if let xdg = PoolPath.environment("XDG_CONFIG_HOME"), xdg.hasPrefix("/") { return xdg + "/pmll/config.json" }
        return PoolPath.homeDirectory + "/.config/pmll/config.json"
    }

    /// The effective configuration: defaults, then the files, then the environment.
    /// `file` (or `$PMLL_CONFIG`) replaces the system and user files and must exist.
    public static func load(file: String? = nil) throws(PMLLError) -> Configuration {
        var configuration = Configuration()
        if let explicit = file ?? PoolPath.environment("PMLL_CONFIG").flatMap({ $0.isEmpty ? nil : $0 }) {
            guard let text = try read(explicit) else {
                throw .invalidConfiguration(file: "file '\(explicit)'", line: nil, key: nil, reason: "it does not exist")
            }
            try configuration.apply(text, from: explicit)
        } else {
            for path in [systemFile, userFile] {
                if let text = try read(path) { try configuration.apply(text, from: path) }
            }
        }
        if let pool = PoolPath.environment("PMLL_POOL"), !pool.isEmpty {
            try configuration.override("pool.path", pool, source: .environment("PMLL_POOL"))
        }
        return configuration
    }

    /// Every setting with its effective value and source, in the documented order.
    public var settings: [Setting] {
        Self.schema.map { Setting(key: $0.key, value: $0.show(self), source: source(of: $0.key)) }
    }

    public func source(of key: String) -> Source {
        sources.last(where: { $0.key == key })?.source ?? .defaultValue
    }

    private mutating func record(_ key: String, _ source: Source) {
        sources.removeAll { $0.key == key }
        sources.append((key, source))
    }

    /// Sets `key` from text (a flag's or a variable's value), as the file would.
    public mutating func override(_ key: String, _ text: String, source: Source) throws(PMLLError) {
        guard let entry = Self.schema.first(where: { $0.key == key }) else {
            throw .invalidConfiguration(file: source.description, line: nil, key: key, reason: "unknown setting")
        }
        let value: ConfigJSON = entry.kind == .string || entry.kind == .action ? .string(text) : entry.kind == .bool ? (text == "true" ? .bool(true) : text == "false" ? .bool(false) : .string(text)) : (Int64(text).map(ConfigJSON.integer) ?? .string(text))
        try set(entry, value, where: source.description, line: nil)
        record(key, source)
    }

    // MARK: reading files

    private static func read(_ path: String) throws(PMLLError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return nil }
            // A directory on the way we may not search (another user's $HOME): we cannot see a
            // file there at all, so there is none for us. A file we can see but not read is an error.
            var st = stat()
            if errno == EACCES && stat(path, &st) != 0 && errno == EACCES { return nil }
            throw .invalidConfiguration(file: "file '\(path)'", line: nil, key: nil, reason: "cannot be read: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw .invalidConfiguration(file: "file '\(path)'", line: nil, key: nil, reason: "cannot be read: \(String(cString: strerror(errno)))") }
            if n == 0 { return bytes }
            bytes += chunk[..<n]
            guard bytes.count <= 1 << 20 else { throw .invalidConfiguration(file: "file '\(path)'", line: nil, key: nil, reason: "larger than 1 MiB") }
        }
    }

    private mutating func apply(_ text: [UInt8], from path: String) throws(PMLLError) {
        let where_ = "file '\(path)'"
        let document: ConfigJSON
        do { document = try ConfigJSON.parse(text) } catch {
            throw .invalidConfiguration(file: where_, line: error.line, key: nil, reason: error.message)
        }
        guard case let .object(sections) = document else {
            throw .invalidConfiguration(file: where_, line: 1, key: nil, reason: "the document must be an object of sections (pool, queue, backup, check, recovery)")
        }
        for (section, sectionLine, body) in sections {
            guard Self.schema.contains(where: { $0.key.hasPrefix(section + ".") }) else {
                throw .invalidConfiguration(file: where_, line: sectionLine, key: section, reason: "unknown section (known: pool, queue, backup, check, recovery)")
            }
            guard case let .object(members) = body else {
                throw .invalidConfiguration(file: where_, line: sectionLine, key: section, reason: "must be an object, not \(body.kind)")
            }
            for (name, line, value) in members {
                let key = section + "." + name
                guard let entry = Self.schema.first(where: { $0.key == key }) else {
                    let known = Self.schema.filter { $0.key.hasPrefix(section + ".") }.map { $0.key.dropFirst(section.count + 1) }
                    throw .invalidConfiguration(file: where_, line: line, key: key, reason: "unknown setting (\(section) has: \(known.joined(separator: ", ")))")
                }
                try set(entry, value, where: where_, line: line)
                record(key, .file(path))
            }
        }
        if backupInterval != nil && backupDirectory == nil {
            throw .invalidConfiguration(file: where_, line: nil, key: "backup.interval_s", reason: "scheduled backups need backup.directory")
        }
        // Settings that are fine alone but not together (e.g. a size too small for the capacities).
        do { try poolOptions.validate() } catch {
            throw .invalidConfiguration(file: where_, line: nil, key: "pool", reason: "\(error)")
        }
    }

    private mutating func set(_ entry: Entry, _ value: ConfigJSON, where place: String, line: Int?) throws(PMLLError) {
        func bad(_ reason: String) -> PMLLError { .invalidConfiguration(file: place, line: line, key: entry.key, reason: reason) }
        switch entry.kind {
        case .string:
            guard case let .string(s) = value, !s.isEmpty, !s.utf8.contains(0) else { throw bad("expected a non-empty string, found \(value.kind)") }
            entry.setString?(&self, s)
        case .bool:
            guard case let .bool(b) = value else { throw bad("expected true or false, found \(value.kind)") }
            entry.setBool?(&self, b)
        case let .integer(range, unit):
            guard case let .integer(i) = value else { throw bad("expected a whole number\(unit.isEmpty ? "" : " of \(unit)"), found \(value.kind)") }
            guard range.contains(i) else { throw bad("\(i) is outside \(range.lowerBound)...\(range.upperBound)\(unit.isEmpty ? "" : " \(unit)")") }
            entry.setInteger?(&self, i)
        case .action:
            entry.setAction?(&self, try Self.action(value, bad))
        case .actions:
            guard case let .object(members) = value else { throw bad("expected an object of names to actions, found \(value.kind)") }
            var actions: [String: RecoveryAction] = [:]
            for (name, memberLine, member) in members {
                actions[name] = try Self.action(member) { reason in
                    .invalidConfiguration(file: place, line: memberLine, key: entry.key + "." + name, reason: reason)
                }
            }
            entry.setActions?(&self, actions)
        }
    }

    private static func action(_ value: ConfigJSON, _ bad: (String) -> PMLLError) throws(PMLLError) -> RecoveryAction {
        let names = RecoveryAction.allCases.map(\.rawValue).joined(separator: ", ")
        guard case let .string(name) = value else { throw bad("expected one of \(names), found \(value.kind)") }
        guard let action = RecoveryAction(rawValue: name) else { throw bad("'\(name)' is not one of \(names)") }
        return action
    }

    // MARK: the settings

    enum Kind: Equatable {
        case string, bool
        case integer(ClosedRange<Int64>, unit: String)
        /// One of ``RecoveryAction``'s names.
        case action
        /// An object of names (queues or kinds) to actions.
        case actions
    }

    struct Entry: Sendable {
        let key: String
        let kind: Kind
        var setString: (@Sendable (inout Configuration, String) -> Void)?
        var setBool: (@Sendable (inout Configuration, Bool) -> Void)?
        var setInteger: (@Sendable (inout Configuration, Int64) -> Void)?
        var setAction: (@Sendable (inout Configuration, RecoveryAction) -> Void)?
        var setActions: (@Sendable (inout Configuration, [String: RecoveryAction]) -> Void)?
        let show: @Sendable (Configuration) -> String
    }

    private static func integer(_ key: String, _ range: ClosedRange<Int64>, unit: String = "", _ set: @escaping @Sendable (inout Configuration, Int64) -> Void, _ show: @escaping @Sendable (Configuration) -> String) -> Entry {
        Entry(key: key, kind: .integer(range, unit: unit), setInteger: set, show: show)
    }

    private static func milliseconds(_ d: Duration?) -> String {
        guard let d else { return "0 (none)" }
        return "\(d.nanoseconds / 1_000_000)"
    }

    static let schema: [Entry] = [
        Entry(key: "pool.path", kind: .string, setString: { $0.poolPath = $1 }, show: { $0.poolPath ?? PoolPath.defaultPath }),
        integer("pool.size", 1 << 20...1 << 40, unit: "bytes", { $0.poolOptions.size = Int($1) }, { "\($0.poolOptions.size)" }),
        integer("pool.size_limit", 1 << 20...1 << 40, unit: "bytes", { $0.poolOptions.sizeLimit = Int($1) }, { "\($0.poolOptions.sizeLimit)" }),
        integer("pool.process_capacity", 1...1024, { $0.poolOptions.processCapacity = Int($1) }, { "\($0.poolOptions.processCapacity)" }),
        integer("pool.lock_capacity", 1...1 << 20, { $0.poolOptions.lockCapacity = Int($1) }, { "\($0.poolOptions.lockCapacity)" }),
        integer("pool.queue_capacity", 0...4096, { $0.poolOptions.queueCapacity = Int($1) }, { "\($0.poolOptions.queueCapacity)" }),
        integer("pool.queue_ring", 2...65536, { $0.poolOptions.queueRing = Int($1) }, { "\($0.poolOptions.queueRing)" }),
        integer("pool.key_capacity", 16...1 << 22, { $0.poolOptions.keyCapacity = Int($1) }, { "\($0.poolOptions.keyCapacity)" }),
        integer("pool.log_slots", 1...256, { $0.poolOptions.logSlots = Int($1) }, { "\($0.poolOptions.logSlots)" }),
        Entry(key: "pool.group_shared", kind: .bool, setBool: { $0.poolOptions.groupShared = $1 }, show: { "\($0.poolOptions.groupShared)" }),
        Entry(key: "audit.queue_steps", kind: .bool, setBool: { $0.poolOptions.auditQueueSteps = $1 }, show: { "\($0.poolOptions.auditQueueSteps)" }),
        integer("pool.owner_check_interval_ms", 1...60_000, unit: "ms", { $0.poolOptions.ownerCheckInterval = .milliseconds($1) }, { milliseconds($0.poolOptions.ownerCheckInterval) }),
        integer("pool.starvation_threshold_ms", 0...60_000, unit: "ms", { $0.poolOptions.starvationThreshold = .milliseconds($1) }, { milliseconds($0.poolOptions.starvationThreshold) }),
        integer("queue.timeout_ms", 0...86_400_000, unit: "ms (0: no limit)", { $0.queue.timeout = $1 == 0 ? nil : .milliseconds($1) }, { milliseconds($0.queue.timeout) }),
        integer("queue.max_retries", 0...1000, { $0.queue.retry.maxRetries = Int($1) }, { "\($0.queue.retry.maxRetries)" }),
        integer("queue.base_delay_ms", 0...3_600_000, unit: "ms", { $0.queue.retry.baseDelay = .milliseconds($1) }, { milliseconds($0.queue.retry.baseDelay) }),
        integer("queue.max_delay_ms", 0...3_600_000, unit: "ms", { $0.queue.retry.maxDelay = .milliseconds($1) }, { milliseconds($0.queue.retry.maxDelay) }),
        Entry(key: "backup.directory", kind: .string, setString: { $0.backupDirectory = $1 }, show: { $0.backupDirectory ?? "(none)" }),
        integer("backup.keep", 1...10_000, { $0.backupKeep = Int($1) }, { "\($0.backupKeep)" }),
        integer("backup.interval_s", 0...31_536_000, unit: "seconds (0: never)", { $0.backupInterval = $1 == 0 ? nil : .seconds($1) },
                { $0.backupInterval.map { "\($0.components.seconds)" } ?? "0 (never)" }),
        Entry(key: "recovery.default", kind: .action, setAction: { $0.recovery.defaultAction = $1 }, show: { $0.recovery.defaultAction.rawValue }),
        Entry(key: "recovery.queues", kind: .actions, setActions: { $0.recovery.byQueue = $1 },
              show: { $0.recovery.byQueue.isEmpty ? "(none)" : $0.recovery.byQueue.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }.joined(separator: ",") }),
        Entry(key: "recovery.kinds", kind: .actions, setActions: { $0.recovery.byKind = $1 },
              show: { $0.recovery.byKind.isEmpty ? "(none)" : $0.recovery.byKind.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }.joined(separator: ",") }),
        integer("recovery.max_attempts", 1...1000, { $0.recovery.maxAttempts = Int($1) }, { "\($0.recovery.maxAttempts)" }),
        integer("check.interval_s", 0...2_592_000, unit: "seconds (0: never)", { $0.checkInterval = $1 == 0 ? nil : .seconds($1) },
                { $0.checkInterval.map { "\($0.components.seconds)" } ?? "0 (never)" }),
    ]
}

import PMLLCore

/// One operation of an etcd queue, as recorded under `PREFIX/queue/NAME/TICKET[.INDEX]`.
public struct EtcdOperationRecord: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case running, completed, failed
        /// Its process died while it ran (the turn's lease expired).
        case abandoned
        /// A recovery handler dealt with the abandoned operation (or a policy said to let it
        /// be, or a person released it from quarantine).
        case recovered
        /// Recovery set it aside for a person (policy `quarantine`, or its handler failed
        /// too often): ``EtcdPool/releaseQuarantined(queue:ticket:index:)``.
        case quarantined
    }
    public var queue: String
    /// The turn's fencing token. The operations of one batch share it.
    public var ticket: Int64
    /// The position in its batch (nil: not part of a batch, or its first operation).
    public var index: Int?
    public var kind: String
    public var payload: [UInt8]
    public var state: State
    public var pid: Int32
    public var host: String
    public var command: String
    public var lease: Int64
    /// When it was submitted (before waiting for the turn), in ns since the epoch.
    public var submitted: Int64?
    /// When its first attempt started.
    public var started: Int64
    public var finished: Int64?
    /// Attempts made: 1 + retries (nil in records of older versions: 1).
    public var attempts: Int?
    /// The final error of a failed operation, or the last retried one of a running one, or
    /// the last failure of a recovery handler.
    public var error: String?
    /// Failed recovery attempts (nil: none).
    public var recoveryAttempts: Int?
    /// Whether this process submitted the operation (its pid, on this host).
    public var isThisProcess: Bool { ParticipantIdentity.isCurrent(pid: pid, host: host) }

    init(queue: String, ticket: Int64, index: Int, kind: String, payload: [UInt8], participant: ParticipantIdentity, lease: Int64, submitted: Int64) {
        self.queue = queue
        self.ticket = ticket
        self.index = index > 0 ? index : nil
        self.kind = kind
        self.payload = payload
        state = .running
        pid = participant.pid
        host = participant.host
        command = participant.command
        self.lease = lease
        self.submitted = submitted
        started = Self.now()
        attempts = 1
    }

    static func now() -> Int64 { Clock.realtimeNanoseconds }

    /// Finished: it will not change again (abandoned and quarantined ones wait for recovery
    /// or a person, so they are never trimmed).
    var isSettled: Bool { state == .completed || state == .failed || state == .recovered }
}

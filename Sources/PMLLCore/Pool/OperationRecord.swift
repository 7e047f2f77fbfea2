/// A queue operation's persistent record, as the API shows it (the queue layer reads it out
/// of the pool; it lives in the core because errors carry it).
public struct OperationRecord: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case queued, running, succeeded, failed, abandoned
        /// The ticket was given up (timeout or cancellation before running) or its submitter
        /// died before writing the record: nothing ran.
        case void
    }
    public let queue: String
    public let ticket: UInt64
    public let kind: String
    public let state: State
    public let ownerPid: Int32
    public let ownerCommand: String
    public let attempts: UInt32
    /// Operations of the same batch that follow this one, including itself.
    public let batchRemaining: UInt32
    /// Recovery has handled this abandoned operation.
    public let recovered: Bool
    public let submittedAtNanoseconds: UInt64
    public let startedAtNanoseconds: UInt64
    public let finishedAtNanoseconds: UInt64
    public let lastError: String
    public let payload: [UInt8]

    package init(queue: String, ticket: UInt64, kind: String, state: State, ownerPid: Int32, ownerCommand: String, attempts: UInt32,
                 batchRemaining: UInt32, recovered: Bool, submittedAtNanoseconds: UInt64, startedAtNanoseconds: UInt64,
                 finishedAtNanoseconds: UInt64, lastError: String, payload: [UInt8]) {
        self.queue = queue
        self.ticket = ticket
        self.kind = kind
        self.state = state
        self.ownerPid = ownerPid
        self.ownerCommand = ownerCommand
        self.attempts = attempts
        self.batchRemaining = batchRemaining
        self.recovered = recovered
        self.submittedAtNanoseconds = submittedAtNanoseconds
        self.startedAtNanoseconds = startedAtNanoseconds
        self.finishedAtNanoseconds = finishedAtNanoseconds
        self.lastError = lastError
        self.payload = payload
    }
}


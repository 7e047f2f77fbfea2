import CPMLL

/// The result of ``Pool/check()``: every problem found, and what was looked at.
public struct CheckReport: Codable, Sendable {
    public init() {}
    public var problems: [String] = []
    public var locksChecked = 0
    public var queueRecordsChecked = 0
    public var keysChecked = 0
    public var blocksUsed = 0
    public var blocksReferenced = 0
    public var ok: Bool { problems.isEmpty }
}

extension Pool {
    /// The core's part of ``Pool/check()``: the process table (the header was checked on open).
    package func checkProcessTable(into report: inout CheckReport) {
        for index in memory.slots {
            let s = memory.slot(index)
            if s.pointee.state > PMLL_SLOT_ACTIVE || s.pointee.generation > PMLL_MAX_GENERATION {
                report.problems.append("process slot \(index.rawValue): state \(s.pointee.state), generation \(s.pointee.generation)")
            }
        }
    }
}

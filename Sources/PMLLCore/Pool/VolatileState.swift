package import CPMLL

/// Why the volatile part of a pool (lock words, process table) was reset on open.
public enum VolatileReset: String, Sendable, Codable {
    /// The pool was just created.
    case created
    /// No other process had the pool open; whatever it holds is left over from processes
    /// that are gone.
    case noOtherProcess = "no-other-process"
    /// The machine rebooted since the pool was last used (boot id changed).
    case reboot
}

/// Resetting lock words and process slots when nobody else can be using them. The caller
/// holds the INIT byte lock and the SESSION byte exclusively: no other process is attached.
package enum VolatileState {
    package static func stampBoot(_ header: UnsafeMutablePointer<pmll_header_t>, reason: UInt32,
                                  bootID: String = ProcessIdentity.bootID()) {
        writeFixedCString(bootID, into: &header.pointee.boot_id)
        header.pointee.last_reset_reason = reason
    }

    package static func bootChanged(_ header: UnsafeMutablePointer<pmll_header_t>,
                                    bootID: String = ProcessIdentity.bootID()) -> Bool {
        String(fixedCString: header.pointee.boot_id) != bootID
    }

    /// Resets the layers' volatile state (lock words, queue waits; `layers`, which must
    /// still read the process table to name dead holders), then frees every process slot.
    /// Returns how many slots dead processes had left registered.
    @discardableResult
    package static func reset(_ memory: PoolMemory, reason: VolatileReset, bootID: String = ProcessIdentity.bootID(),
                              layers: (PoolMemory) -> Void) -> Int {
        layers(memory)
        var leftOver = 0
        for index in memory.slots {
            let slot = memory.slot(index)
            if slot.pointee.state != PMLL_SLOT_FREE { leftOver += 1 }
            storeIfChanged(&slot.pointee.state, PMLL_SLOT_FREE)
            ReaderLedger.clear(slot)
        }
        let header = memory.header
        stampBoot(header, reason: reason == .reboot ? PMLL_RESET_REBOOT : PMLL_RESET_LAST_PROCESS_GONE, bootID: bootID)
        header.pointee.volatile_resets &+= 1
        // A policy change whose writer died between its commit and publication left the epoch
        // odd; with nobody attached, nobody is changing it now.
        let epoch = pmll_header_policy_epoch(header)
        if epoch.pointee & 1 == 1 { epoch.pointee &+= 1 }
        return leftOver
    }
}

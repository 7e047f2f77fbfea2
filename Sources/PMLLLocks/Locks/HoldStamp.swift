package import CPMLL
import PMLLCore

/// When the current hold of a lock began, without a clock read on the uncontended path.
///
/// `acquisitions` numbers the holds (only the holder increments it). A stamp is the pair
/// (epoch, wall-clock time). Contended acquisitions stamp exactly (the slow path reads the
/// clock anyway); an uncontended hold is stamped by whoever first looks at it (a waiter,
/// `status`, a death detector), so its start is then a lower bound: "held since at least".
package enum HoldStamp {
    /// Exact stamp by the new holder.
    package static func stamp(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, at now: Int64 = Clock.realtimeNanoseconds) {
        entry.pointee.held_since_ns = UInt64(bitPattern: now)
        entry.pointee.held_epoch = entry.pointee.acquisitions
    }

    /// The start of the current hold, stamping it now if nobody has yet.
    package static func heldSince(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> Int64 {
        let epoch = pmll_load64(&entry.pointee.acquisitions)
        if pmll_load64(&entry.pointee.held_epoch) != epoch {
            let now = Clock.realtimeNanoseconds
            pmll_store64(&entry.pointee.held_since_ns, UInt64(bitPattern: now))
            pmll_store64(&entry.pointee.held_epoch, epoch)
            return now
        }
        return Int64(bitPattern: pmll_load64(&entry.pointee.held_since_ns))
    }
}

public import CPMLLABI
#if canImport(Glibc)
import Glibc
#endif

/// A C promise: pending, then fulfilled with a value or rejected with a reason, once. The
/// C caller holds one reference (`promise_free` drops it); whoever settles it holds another.
final class CPromise: @unchecked Sendable {
    private let condition = Condition()
    // Guarded by `condition`.
    private var state = PROMISE_PENDING
    private var value: UnsafeMutableRawPointer?
    private var continuations: [(CPromise, on_fulfilled_callback?, on_rejected_callback?, UnsafeMutableRawPointer?)] = []
    /// Reasons the library wrote, freed with the promise.
    private var owned: [UnsafeMutablePointer<CChar>] = []

    deinit { for string in owned { free(string) } }

    var handle: OpaquePointer { OpaquePointer(Unmanaged.passRetained(self).toOpaque()) }

    static func from(_ handle: OpaquePointer?) -> CPromise? {
        handle.map { Unmanaged<CPromise>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }

    var snapshot: (PromiseState, UnsafeMutableRawPointer?) { condition.withLock { (state, value) } }

    /// Keeps `string` (strdup'ed) alive as long as the promise and returns it.
    func own(_ string: String) -> UnsafeMutableRawPointer {
        let copy = strdup(string)!
        condition.withLock { owned.append(copy) }
        return UnsafeMutableRawPointer(copy)
    }

    func settle(_ newState: PromiseState, _ newValue: UnsafeMutableRawPointer?) {
        let waiting = condition.withLock { () -> [(CPromise, on_fulfilled_callback?, on_rejected_callback?, UnsafeMutableRawPointer?)] in
            guard state == PROMISE_PENDING else { return [] }
            state = newState
            value = newValue
            condition.broadcast()
            defer { continuations = [] }
            return continuations
        }
        for (next, onFulfilled, onRejected, userData) in waiting { Self.run(next, newState, newValue, onFulfilled, onRejected, userData) }
    }

    func wait(until deadline: Int64) -> Bool {
        condition.withLock { condition.wait(until: deadline) { state != PROMISE_PENDING } }
    }

    func then(_ onFulfilled: on_fulfilled_callback?, _ onRejected: on_rejected_callback?, _ userData: UnsafeMutableRawPointer?) -> CPromise {
        let next = CPromise()
        let settled = condition.withLock { () -> (PromiseState, UnsafeMutableRawPointer?)? in
            if state == PROMISE_PENDING {
                continuations.append((next, onFulfilled, onRejected, userData))
                return nil
            }
            return (state, value)
        }
        if let (state, value) = settled { Self.run(next, state, value, onFulfilled, onRejected, userData) }
        return next
    }

    /// A handler's result fulfils the next promise; with no handler the outcome passes through.
    private static func run(_ next: CPromise, _ state: PromiseState, _ value: UnsafeMutableRawPointer?,
                            _ onFulfilled: on_fulfilled_callback?, _ onRejected: on_rejected_callback?, _ userData: UnsafeMutableRawPointer?) {
        if state == PROMISE_FULFILLED {
            if let onFulfilled { next.settle(PROMISE_FULFILLED, onFulfilled(value, userData)) } else { next.settle(PROMISE_FULFILLED, value) }
        } else {
            if let onRejected { next.settle(PROMISE_FULFILLED, onRejected(value, userData)) } else { next.settle(PROMISE_REJECTED, value) }
        }
    }
}

@_cdecl("promise_state")
public func cPromiseState(_ handle: OpaquePointer?) -> PromiseState {
    CPromise.from(handle)?.snapshot.0 ?? PROMISE_REJECTED
}

@_cdecl("promise_value")
public func cPromiseValue(_ handle: OpaquePointer?) -> UnsafeMutableRawPointer? {
    CPromise.from(handle)?.snapshot.1
}

@_cdecl("promise_wait")
public func cPromiseWait(_ handle: OpaquePointer?, _ timeoutMilliseconds: UInt32) -> Bool {
    guard let promise = CPromise.from(handle) else { return false }
    return promise.wait(until: timeoutMilliseconds == 0 ? .max : CDeadline.after(milliseconds: timeoutMilliseconds))
}

@_cdecl("promise_then")
public func cPromiseThen(_ handle: OpaquePointer?, _ onFulfilled: on_fulfilled_callback?, _ onRejected: on_rejected_callback?, _ userData: UnsafeMutableRawPointer?) -> OpaquePointer? {
    guard let promise = CPromise.from(handle) else {
        _ = CResult.invalid("promise is NULL")
        return nil
    }
    return promise.then(onFulfilled, onRejected, userData).handle
}

@_cdecl("promise_free")
public func cPromiseFree(_ handle: OpaquePointer?) {
    guard let handle else { return }
    Unmanaged<CPromise>.fromOpaque(UnsafeRawPointer(handle)).release()
}

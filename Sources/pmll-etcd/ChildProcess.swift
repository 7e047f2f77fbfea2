@preconcurrency import Dispatch
import Foundation
import PMLLCore
import PMLLEtcd

/// COMMAND as a child of this process, waited for on a thread of its own (a blocking
/// `waitpid` must not hold one of Swift's few cooperative threads).
enum ChildProcess {
    struct Result: Sendable {
        var status: Int32
        var signaled: Bool
        /// COMMAND could not be started at all (status 126 or 127 then).
        var spawnFailed = false
    }

    static func run(_ argv: [String], environment: [String: String]) async throws -> Result {
        var pid: pid_t = 0
        let args = argv.map { strdup($0) } + [nil]
        let env = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            args.forEach { free($0) }
            env.forEach { free($0) }
        }
        let rc = posix_spawnp(&pid, argv[0], nil, nil, args, env)
        guard rc == 0 else {
            let status: Int32 = rc == ENOENT ? 127 : 126
            FileHandle.standardError.write(Data("pmll: cannot run '\(argv[0])': \(String(cString: strerror(rc)))\n".utf8))
            return Result(status: status, signaled: false, spawnFailed: true)
        }
        let child = pid
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(child, &status, 0) < 0 && errno == EINTR {}
                let signal = status & 0x7f
                if signal == 0 {
                    continuation.resume(returning: Result(status: (status >> 8) & 0xff, signaled: false))
                } else {
                    continuation.resume(returning: Result(status: 128 + signal, signaled: true))
                }
            }
        }
    }
}

/// Runs `action` when `signal` arrives (instead of the default action) until stopped.
final class SignalForwarder: @unchecked Sendable {   // the source is only resumed and cancelled
    private let source: any DispatchSourceSignal
    init(_ signal: Int32, _ action: @escaping @Sendable () -> Void) {
        Foundation.signal(signal, SIG_IGN)
        source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
    }
    func stop() { source.cancel() }
}

/// Runs `work` (a wait for a lock or a turn, then COMMAND) so that SIGINT cancels it — the
/// waiter key is withdrawn — and closes the pool afterwards (its lease revoked), whatever the
/// outcome.
func runInterruptibly<T: Sendable>(closing pool: EtcdPool, _ work: @escaping @Sendable () async throws -> T) async -> Result<T, any Error> {
    let task = Task { try await work() }
    let interrupt = SignalForwarder(SIGINT) { task.cancel() }
    let outcome = await task.result
    interrupt.stop()
    await pool.close()
    return outcome
}

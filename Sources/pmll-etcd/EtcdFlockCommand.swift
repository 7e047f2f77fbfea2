import ArgumentParser
import Foundation
import PMLLCore
import PMLLEtcd
import PMLLFlockOptions

/// `pmll flock` on an etcd pool (`PMLL_POOL=etcd://...`): the same flock(1) options and exit
/// statuses as locally, on the etcd lock named after FILE's canonical path. `-F` is refused:
/// the exec'd program would not renew the lease, so the lock would silently end after the TTL.
struct EtcdFlockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flock",
        abstract: "Drop-in for flock(1) on an etcd pool: run COMMAND holding the lock of FILE.",
        discussion: FlockOptions.help + "\n\nOn an etcd pool, -F/--no-fork is refused (exit 64): nothing would renew the lock's lease after the exec. COMMAND also gets PMLL_FENCING_TOKEN."
    )

    @Argument(parsing: .captureForPassthrough, help: "flock(1) options, FILE, then COMMAND [ARG...] or -c COMMAND.")
    var arguments: [String] = []

    func run() async throws {
        let options: FlockOptions
        do { options = try FlockOptions.parse(arguments) } catch {
            FileHandle.standardError.write(Data("pmll: \(error.message)\n".utf8))
            if error.tryHelp { FileHandle.standardError.write(Data("Try 'pmll flock --help' for more information.\n".utf8)) }
            Foundation.exit(64)
        }
        if options.help {
            print("Usage:\n pmll flock [options] <file>|<directory> <command> [<argument>...]\n pmll flock [options] <file>|<directory> -c <command>\n")
            print(Self.configuration.discussion)
            Foundation.exit(0)
        }
        if options.version {
            print("pmll flock (PMLL, etcd), compatible with flock from util-linux 2.38.1")
            Foundation.exit(0)
        }
        if options.noFork { EtcdCommand.fail("-F/--no-fork is not available on etcd pools: nothing would renew the lock's lease after the exec", status: 64) }
        let path: String
        do { path = try FlockFile.canonicalPath(options.file, show: { $0.debugDescription }) } catch {
            EtcdCommand.fail(error.message, status: error.status)
        }
        if options.unlock {
            Foundation.exit(try await ChildProcess.run(options.command, environment: ProcessInfo.processInfo.environment).status)
        }
        let pool = try await EtcdPoolArguments.open(nil)
        let lock = try await pool.lock(named: FlockFile.lockName(path), level: .filesystem)
        let started = ContinuousClock.now
        let timeout: Duration? = options.nonblock || options.timeout == 0 ? .zero : options.timeout.map { .nanoseconds(Int64($0 * 1e9)) }
        // Not for a lock that is not waited for (-n, -w 0): flock(1) says nothing then.
        let notice: EtcdWaitNotice? = timeout == .zero ? nil : EtcdWaitNotice.lock(pool, FlockFile.lockName(path))
        let outcome = await runInterruptibly(closing: pool) { () async throws -> Int32 in
            defer { notice?.stop() }
            let body = { (grant: inout EtcdLockGrant) async throws -> Int32 in
                notice?.stop()
                if options.verbose {
                    let took = started.duration(to: .now)
                    print(String(format: "pmll: getting lock took %.6f seconds", Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18))
                    print("pmll: executing \(options.command[0])")
                }
                var environment = ProcessInfo.processInfo.environment
                environment["PMLL_FENCING_TOKEN"] = String(grant.fencingToken)
                if let death = grant.previousOwnerDeath {
                    FileHandle.standardError.write(Data("pmll: warning: lock '\(path)': \(death); running COMMAND with PMLL_PREVIOUS_OWNER_DIED=1\n".utf8))
                    environment["PMLL_PREVIOUS_OWNER_DIED"] = "1"
                }
                fflush(nil)
                let result = try await ChildProcess.run(options.command, environment: environment)
                if result.spawnFailed { return 69 }   // flock(1): EX_UNAVAILABLE
                if result.signaled { grant.markInconsistent() }
                return result.status
            }
            return options.shared ? try await lock.withSharedLock(timeout: timeout, body) : try await lock.withLock(timeout: timeout, body)
        }
        switch outcome {
        case .success(let status): Foundation.exit(status)
        case .failure(PMLLError.timeout(_, let holder)):
            let who = holder.map { " (held by \($0))" } ?? ""
            if options.nonblock || options.timeout == 0 {
                if options.verbose { FileHandle.standardError.write(Data("pmll: failed to get lock\(who)\n".utf8)) }
            } else {
                FileHandle.standardError.write(Data("pmll: timeout while waiting to get lock\(who)\n".utf8))
            }
            Foundation.exit(options.conflictExitCode)
        case .failure(let error): throw error
        }
    }
}

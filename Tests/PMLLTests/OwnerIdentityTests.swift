import Foundation
import PMLL
import Testing

/// Owner death must be detected without trusting a bare PID (FIELD-NOTES §1): a zombie
/// answers kill(pid, 0), and processes in different PID namespaces share PID numbers.
@Suite("Owner identity", .serialized)
struct OwnerIdentityTests {
    @Test func deadHolderThatIsAZombieIsTakenOver() throws {
        let scratch = Scratch()
        let pool = scratch.file("z.pool")
        // The holder's parent execs into `sleep`, which never reaps it: after SIGKILL the
        // holder stays a zombie, and its PID stays "alive" for kill(pid, 0).
        let parent = try Child("/bin/sh", ["-c", "\"$0\" hold --pool \"$1\" --lock z & exec sleep 60", Binaries.worker, pool])
        defer { parent.kill(); parent.wait() }
        let acquired = try #require(parent.waitForEvent("acquired"))
        let holderPid = Int32(try #require(acquired["pid"] as? Int))
        kill(holderPid, SIGKILL)
        usleep(100_000)
        let state = (try? String(contentsOfFile: "/proc/\(holderPid)/stat", encoding: .utf8)) ?? ""
        #expect(state.contains(") Z "), "holder should be a zombie: \(state)")
        #expect(kill(holderPid, 0) == 0, "a zombie still answers kill(pid, 0)")

        let lock = try Pool.open(path: pool).lock(named: "z", level: .package)
        let death = try lock.withLock(timeout: .seconds(5)) { $0.previousOwnerDeath }
        #expect(death?.pid == holderPid)
    }

    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare")))
    func holdersInOtherPIDNamespacesWithTheSamePID() throws {
        let scratch = Scratch()
        let pool = scratch.file("ns.pool")
        // Both processes are PID 1 of their own namespace.
        let holder = try Child("/usr/bin/unshare", ["--pid", "--fork", "--kill-child", Binaries.worker, "hold", "--pool", pool, "--lock", "ns"])
        let first = try #require(holder.waitForEvent("acquired"))
        #expect(first["pid"] as? Int == 1)
        let waiter = try Child("/usr/bin/unshare", ["--pid", "--fork", "--kill-child", Binaries.worker, "hold", "--pool", pool, "--lock", "ns", "--seconds", "0"])
        usleep(300_000)
        // The waiter, also PID 1, must neither think it holds the lock nor that the holder is alive forever.
        #expect(waiter.waitForEvent("acquired", timeout: 0.1) == nil)
        holder.kill()   // unshare --kill-child passes SIGKILL on to the namespace's init
        let second = try #require(waiter.waitForEvent("acquired", timeout: 10))
        #expect(second["ownerDied"] as? Bool == true)
        #expect(second["deadPid"] as? Int == 1)   // the PID as the holder saw itself
        #expect(waiter.wait() == 0)
        holder.wait()
    }
}

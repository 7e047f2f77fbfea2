// expect-error: overlapping accesses
import PMLLEtcd
import PMLLLocks

func bad(_ pool: EtcdPool) async throws {
    let package = try await pool.lock("pkg", Package.self)
    let files = try await pool.lock("files", FileSystem.self)
    try await pool.withLockContext { root in
        try await root.withLock(package: package) { _ in
            try await root.withLock(filesystem: files) { _ in }
        }
    }
}

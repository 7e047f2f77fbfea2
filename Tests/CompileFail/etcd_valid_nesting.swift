// expect: success
import PMLLEtcd
import PMLLLocks

func good(_ pool: EtcdPool) async throws {
    let registry = try await pool.lock("registry", Registry.self)
    let package = try await pool.lock("pkg", Package.self)
    let network = try await pool.lock("net", Network.self)
    try await pool.withLockContext { root in
        try await root.withSharedLock(registry: registry) { r in
            try await r.withLock(package: package) { p in
                if let fence = p.fence { try await pool.transaction(fencedBy: [fence]) { try $0.set("k", "v") } }
                try await p.withLock(network: network) { _ in }
            }
        }
    }
}

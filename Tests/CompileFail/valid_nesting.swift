// expect: success
import PMLL

func install(_ pool: Pool) throws {
    let registry = try pool.lock("registry", Registry.self)
    let packages = [try pool.lock("pkg-b", Package.self), try pool.lock("pkg-a", Package.self)]
    let tree = try pool.lock("tree", FileSystem.self)
    let mirror = try pool.lock("mirror", Network.self)
    try pool.withLockContext { root in
        try root.withLock(registry: registry) { r in
            try r.withLocks(package: packages) { p in
                try p.withLock(filesystem: tree) { f in
                    try f.withLock(network: mirror) { _ in }
                }
            }
        }
        try root.withLock(network: mirror) { _ in }   // skipping levels is fine
    }
}

// expect-error: conform to 'MayAcquireFileSystem'
import PMLL

func bad(_ pool: Pool) throws {
    let net = try pool.lock("net", Network.self)
    let tree = try pool.lock("tree", FileSystem.self)
    try pool.withLockContext { root in
        try root.withLock(network: net) { n in
            try n.withLock(filesystem: tree) { _ in }
        }
    }
}

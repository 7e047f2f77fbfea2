import Foundation

/// Hosts for tests that cross a network on one machine: network namespaces joined by a bridge
/// in this namespace (which gets an address on it too, so the test reaches every host), and
/// partitions made by taking a host's link down. Needs root and iproute2; everything is
/// removed by `tearDown` (and by a later lab, by name, if a test was killed).
public final class NetworkLab: @unchecked Sendable {
    public struct Host: Sendable {
        public var namespace: String
        public var address: String
        var link: String
    }
    public static let ip = "/usr/sbin/ip"
    public let hosts: [Host]
    let bridge: String

    public init(hosts count: Int) throws {
        let tag = String(UInt32.random(in: 0..<0xffff_ffff) % 100_000)   // names ≤ 15 bytes
        let subnet = "10.\(77 + Int.random(in: 0..<100)).\(Int.random(in: 0..<250))"
        bridge = "pmlb\(tag)"
        hosts = (1...count).map { Host(namespace: "pmln\(tag)-\($0)", address: "\(subnet).\($0)", link: "pmlv\(tag)\($0)") }
        do {
            try Self.run(["link", "add", bridge, "type", "bridge"])
            try Self.run(["addr", "add", "\(subnet).254/24", "dev", bridge])
            try Self.run(["link", "set", bridge, "up"])
            for host in hosts {
                try Self.run(["netns", "add", host.namespace])
                try Self.run(["link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace])
                try Self.run(["link", "set", host.link, "master", bridge, "up"])
                try Self.run(["-n", host.namespace, "addr", "add", "\(host.address)/24", "dev", "eth0"])
                try Self.run(["-n", host.namespace, "link", "set", "eth0", "up"])
                try Self.run(["-n", host.namespace, "link", "set", "lo", "up"])
            }
        } catch {
            tearDown()
            throw error
        }
    }

    /// Cuts host `i` off from every other host (its link to the bridge goes down); processes
    /// inside it reach only what runs there.
    public func isolate(_ i: Int) throws { try Self.run(["link", "set", hosts[i].link, "down"]) }
    public func heal(_ i: Int) throws { try Self.run(["link", "set", hosts[i].link, "up"]) }

    /// `argv` run inside host `i`'s namespace.
    public func command(in i: Int, _ argv: [String]) -> [String] { [Self.ip, "netns", "exec", hosts[i].namespace] + argv }

    public func tearDown() {
        for host in hosts { try? Self.run(["netns", "del", host.namespace]) }
        try? Self.run(["link", "del", bridge])
    }

    deinit { tearDown() }

    static func run(_ arguments: [String]) throws {
        let result = try SpawnedProcess.run(ip, arguments, capturing: 2)
        guard result.termination == .exited(0) else {
            throw EtcdUnavailable(message: "ip \(arguments.joined(separator: " ")): \(result.output)")
        }
    }
}

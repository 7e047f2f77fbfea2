import AsyncHTTPClient
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PMLLCore
import Synchronization

/// One etcd cluster reached through its JSON gateway (`POST /v3/...` over HTTP/1.1).
///
/// Requests go to the endpoint that answered last; a request that could not be delivered
/// (connection refused, connect timeout) moves to the next endpoint. A request that was
/// delivered and then failed is never sent again, because its outcome is unknown: the
/// caller gets ``PMLLError/backendUnavailable(address:reason:)`` saying so, and the recipes
/// above are written so that the next step finds out what happened (a waiter key is
/// created under a `CreateRevision == 0` guard, commits are compared on revisions).
final class EtcdGateway: Sendable {
    let address: String
    let endpoints: [String]
    let requestTimeout: Duration
    private let client: HTTPClient
    private let current = Mutex(0)
    /// Tests only: the answer to the first delivery of every unary call is thrown away after
    /// the member applied the request, as when a leader dies between applying and answering.
    /// Whatever is safe to send again must then give the same outcome on its second delivery.
    let losesFirstAnswers = Atomic<Bool>(false)
    /// Tests only: every answer to `call` is thrown away after the member applied the request
    /// (a cluster that applies and never answers), until the call's deadline.
    let losesEveryAnswer = Atomic<Bool>(false)
    /// Tests only: no request of `call` reaches a member (a cluster cut off), until the
    /// call's deadline.
    let dropsEveryRequest = Atomic<Bool>(false)

    init(address: String, endpoints: [String], requestTimeout: Duration, tls: EtcdTLS? = nil) throws(PMLLError) {
        self.address = address
        self.endpoints = endpoints
        self.requestTimeout = requestTimeout
        client = try tls.map { tls throws(PMLLError) in try Self.client(for: tls, address: address) } ?? Self.sharedClient
    }

    /// One client per TLS set-up, kept for the process's life like the plain one.
    private static let tlsClients = Mutex<[EtcdTLS: HTTPClient]>([:])

    private static func client(for tls: EtcdTLS, address: String) throws(PMLLError) -> HTTPClient {
        if let known = tlsClients.withLock({ $0[tls] }) { return known }
        var configuration = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = tls.caFile { configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
            if let cert = tls.certificateFile, let key = tls.keyFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
        } catch {
            throw .invalidPoolPath(path: address, reason: "cannot read its TLS files (ca, cert, key as PEM): \(error)")
        }
        var settings = HTTPClient.Configuration(tlsConfiguration: configuration)
        settings.connectionPool = sharedSettings.connectionPool
        settings.timeout = sharedSettings.timeout
        let client = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: settings)
        return tlsClients.withLock { clients in
            if let raced = clients[tls] {
                try? client.syncShutdown()
                return raced
            }
            clients[tls] = client
            return client
        }
    }

    /// One HTTP client per process, never shut down (as `HTTPClient.shared`): a pool that is
    /// dropped without `close()` must not crash the process, and pools share connections.
    /// Not `HTTPClient.shared` itself, whose 8 connections per host are too few: every waiter
    /// holds a watch stream open, and a holder whose release waited behind its own process's
    /// waiters for a connection would never release.
    private static let sharedClient = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: sharedSettings)

    private static var sharedSettings: HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 4096)
        configuration.timeout = .init(connect: .seconds(2), read: nil)
        return configuration
    }

    /// The longest one attempt at one member may take (see `sendOnce`).
    static let attemptLimit: Duration = .seconds(2)

    /// Whether a call may be sent again after a failure whose outcome is unknown.
    enum Retry {
        /// Reads, lease calls, and transactions written so that a second application
        /// changes nothing (a guard that the first application makes false, with a failure
        /// branch that reads what it needs): sent again, through the next member, until the
        /// request timeout — this is what carries a process over a leader election.
        case safe
        /// Commits: a second application could apply a change twice. Sent again only when
        /// the first attempt surely never reached a member.
        case ifNeverDelivered
    }

    /// One unary call: `path` with `body` as JSON, the answer decoded as `Response`.
    func call<Request: Encodable, Response: Decodable>(_ path: String, _ body: Request, as: Response.Type, timeout: Duration? = nil, retry: Retry = .safe) async throws(PMLLError) -> Response {
        let payload: ByteBuffer
        do { payload = ByteBuffer(bytes: try JSONEncoder().encode(body)) } catch {
            throw .invalidOptions(reason: "cannot encode an etcd request: \(error)")
        }
        let bytes = try await onEtcdExecutor { () async throws(PMLLError) in try await send(path, payload, timeout: timeout ?? requestTimeout, retry: retry) }
        do {
            return try JSONDecoder().decode(Response.self, from: Data(bytes))
        } catch {
            throw .backendUnavailable(address: address, reason: "unexpected answer to \(path): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
    }

    /// A failure worth another attempt, and whether the request surely never arrived.
    private struct Transient: Error {
        var description: String
        var neverDelivered: Bool
    }

    private func send(_ path: String, _ payload: ByteBuffer, timeout: Duration, retry: Retry) async throws(PMLLError) -> [UInt8] {
        let deadline = ContinuousClock.now + timeout
        var index = current.withLock { $0 }
        var tried = 0
        var lastFailure = "no endpoint"
        while true {
            do {
                if dropsEveryRequest.load(ordering: .relaxed) {
                    throw Transient(description: "the request was dropped (test fault)", neverDelivered: true)
                }
                let answer = try await sendOnce(path, payload, to: index, deadline: deadline)
                if (tried == 0 && losesFirstAnswers.load(ordering: .relaxed)) || losesEveryAnswer.load(ordering: .relaxed) {
                    throw Transient(description: "the answer was lost (test fault)", neverDelivered: false)
                }
                return answer
            } catch let failure as Transient {
                lastFailure = "\(endpoints[index]): \(failure.description)"
                tried += 1
                index = (index + 1) % endpoints.count
                let mayRetry = failure.neverDelivered || retry == .safe
                guard mayRetry else {
                    throw .backendUnavailable(address: address, reason: "\(path) failed after it was sent, outcome unknown: \(lastFailure)")
                }
                // Every member once at once (the first may just be down), then with a pause
                // (an election takes about a second), until the request's own deadline.
                if tried >= endpoints.count {
                    guard ContinuousClock.now + .milliseconds(100) < deadline else {
                        throw .backendUnavailable(address: address, reason: "no member answered within \(timeout): \(lastFailure)")
                    }
                    try? await Task.sleep(for: .milliseconds(100))
                }
                if Task.isCancelled { throw .cancelled(lock: path) }
            } catch let error as PMLLError {
                throw error
            } catch {
                throw .cancelled(lock: path)
            }
        }
    }

    private func sendOnce(_ path: String, _ payload: ByteBuffer, to index: Int, deadline: ContinuousClock.Instant) async throws -> [UInt8] {
        var request = HTTPClientRequest(url: endpoints[index] + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(payload)
        // One member gets at most 2 s of the call's time: a member that hangs (cut off, or
        // without a leader) must not use it all while another could answer.
        let left = min(max(ContinuousClock.now.duration(to: deadline), .milliseconds(1)), Self.attemptLimit)
        let response: HTTPClientResponse
        let body: ByteBuffer
        do {
            response = try await client.execute(request, timeout: .nanoseconds(left.nanosecondsClamped))
            body = try await response.body.collect(upTo: 64 << 20)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            if let tls = tlsFailure(error, at: index) { throw tls }
            throw Transient(description: Self.describe(error), neverDelivered: Self.neverDelivered(error))
        }
        current.withLock { $0 = index }
        guard response.status.code >= 300 else { return Array(body.readableBytesView) }
        let text = String(buffer: body)
        let refusal = try? JSONDecoder().decode(GatewayError.self, from: Data(text.utf8))
        let message = refusal?.text ?? text
        // gRPC Unavailable (14) and DeadlineExceeded (4), as the gateway passes them on:
        // no leader, leader changed, request timed out — the member may or may not have
        // applied the request.
        if response.status.code == 503 || response.status.code == 504 || refusal?.code == 14 || refusal?.code == 4 {
            throw Transient(description: "HTTP \(response.status.code): \(message)", neverDelivered: false)
        }
        throw PMLLError.backendUnavailable(address: address, reason: "etcd answered \(path) with HTTP \(response.status.code): \(message)")
    }

    /// One unary call completed on a NIO event loop, not on Swift's cooperative pool: the
    /// lease's grant and keep-alive must be handled when the application blocks every
    /// cooperative thread (a synchronous wait, a blocking read), or the process would lose
    /// its locks for it. Only for calls that are safe to repeat (lease grant: a lease granted
    /// twice leaves one unused, which expires; keep-alive): a failure moves to the next member
    /// and, once every member was tried, tries again every 100 ms until `timeout` (an election).
    func callOnEventLoop<Request: Encodable, Response: Decodable & Sendable>(_ path: String, _ body: Request, as: Response.Type, timeout: Duration) -> EventLoopFuture<Response> {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let payload: Data
        do { payload = try JSONEncoder().encode(body) } catch { return loop.makeFailedFuture(error) }
        let deadline = NIODeadline.now() + .nanoseconds(timeout.nanosecondsClamped)
        return attempt(path, payload, deadline: deadline, index: current.withLock { $0 }, tried: 0, on: loop)
    }

    private func attempt<Response: Decodable & Sendable>(_ path: String, _ payload: Data, deadline: NIODeadline, index: Int, tried: Int, on loop: any EventLoop) -> EventLoopFuture<Response> {
        let request: HTTPClient.Request
        do {
            request = try HTTPClient.Request(url: endpoints[index] + path, method: .POST, headers: ["Content-Type": "application/json"], body: .data(payload))
        } catch { return loop.makeFailedFuture(error) }
        let address = self.address
        let attemptDeadline = min(deadline, .now() + .nanoseconds(Self.attemptLimit.nanosecondsClamped))
        return client.execute(request: request, eventLoop: .delegate(on: loop), deadline: attemptDeadline).flatMapThrowing { response -> Response in
            self.current.withLock { $0 = index }
            let bytes = response.body.map { Data($0.readableBytesView) } ?? Data()
            guard response.status.code < 300 else {
                let refusal = try? JSONDecoder().decode(GatewayError.self, from: bytes)
                let message = "HTTP \(response.status.code): \(refusal?.text ?? String(decoding: bytes, as: UTF8.self))"
                if response.status.code == 503 || response.status.code == 504 || refusal?.code == 14 || refusal?.code == 4 {
                    throw Transient(description: message, neverDelivered: false)
                }
                throw PMLLError.backendUnavailable(address: address, reason: "etcd answered \(path) with \(message)")
            }
            do { return try JSONDecoder().decode(Response.self, from: bytes) } catch {
                throw PMLLError.backendUnavailable(address: address, reason: "unexpected answer to \(path): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
            }
        }.flatMapError { error -> EventLoopFuture<Response> in
            if error is PMLLError { return loop.makeFailedFuture(error) }
            if let tls = self.tlsFailure(error, at: index) { return loop.makeFailedFuture(tls) }
            let failure = "\(self.endpoints[index]): \((error as? Transient)?.description ?? Self.describe(error))"
            let next = (index + 1) % self.endpoints.count
            let pause: TimeAmount = tried + 1 >= self.endpoints.count ? .milliseconds(100) : .zero
            guard NIODeadline.now() + pause < deadline else {
                return loop.makeFailedFuture(PMLLError.backendUnavailable(address: address, reason: "no member answered \(path) in time: \(failure)"))
            }
            return loop.scheduleTask(in: pause) {}.futureResult.flatMap {
                self.attempt(path, payload, deadline: deadline, index: next, tried: tried + 1, on: loop)
            }
        }
    }

    /// Waits until `key` is deleted at a revision after `revision` (or the watch ends, which
    /// the caller treats as "look again"). Returns at once if the deletion already happened:
    /// a watch from `revision + 1` replays it.
    func waitForDeletion(of key: [UInt8], after revision: Int64, deadline: ContinuousClock.Instant?) async throws(PMLLError) {
        try await onEtcdExecutor { () async throws(PMLLError) in try await watchForDeletion(of: key, after: revision, deadline: deadline) }
    }

    private func watchForDeletion(of key: [UInt8], after revision: Int64, deadline: ContinuousClock.Instant?) async throws(PMLLError) {
        let create = WatchCreate(create_request: .init(key: EtcdBytes(key), start_revision: EtcdInt(revision + 1), filters: ["NOPUT"]))
        let payload: ByteBuffer
        do { payload = ByteBuffer(bytes: try JSONEncoder().encode(create)) } catch {
            throw .invalidOptions(reason: "cannot encode an etcd watch: \(error)")
        }
        let index = current.withLock { $0 }
        var request = HTTPClientRequest(url: endpoints[index] + "/v3/watch")
        request.method = .POST
        request.body = .bytes(payload)
        let prepared = request
        do {
            // The response head comes at once and the stream then stays open: the deadline
            // must bound the reading, not only the request, so the two race in a group.
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { [client] in
                    let response = try await client.execute(prepared, timeout: .hours(24 * 365))
                    var line: [UInt8] = []
                    for try await chunk in response.body {
                        for byte in chunk.readableBytesView {
                            guard byte == UInt8(ascii: "\n") else { line.append(byte); continue }
                            defer { line.removeAll(keepingCapacity: true) }
                            guard let message = try? JSONDecoder().decode(WatchMessage.self, from: Data(line)) else { continue }
                            if message.error != nil { return }
                            guard let result = message.result else { continue }
                            if result.canceled == true { return }
                            if result.events?.contains(where: { $0.type == "DELETE" }) == true { return }
                        }
                    }
                }
                if let deadline {
                    group.addTask { try await Task.sleep(until: deadline, clock: .continuous) }
                }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            if Task.isCancelled { throw .cancelled(lock: String(decoding: key, as: UTF8.self)) }
            if let deadline, ContinuousClock.now >= deadline { return }   // the caller sees its deadline passed
            // A member that went away ends the watch; the caller looks again (through the
            // next member) after a short pause, so a dead member does not make it spin.
            current.withLock { $0 = ($0 + 1) % endpoints.count }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    private static func neverDelivered(_ error: any Error) -> Bool {
        if error is NIOConnectionError { return true }
        if let error = error as? HTTPClientError, error == .connectTimeout { return true }
        if let error = error as? IOError, error.errnoCode == ECONNREFUSED || error.errnoCode == EHOSTUNREACH || error.errnoCode == ENETUNREACH { return true }
        if let error = error as? ChannelError, case .connectTimeout = error { return true }
        return false
    }

    /// A TLS failure (an untrusted certificate, no client certificate where the member asks
    /// for one) comes from the pool's set-up, not the member's state: another attempt would
    /// fail the same way, so it is reported at once instead of at the request timeout.
    private func tlsFailure(_ error: any Error, at index: Int) -> PMLLError? {
        guard error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError else { return nil }
        return .backendUnavailable(address: address, reason: "TLS with \(endpoints[index]) failed (check the address's ca, cert and key): \(error)")
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            return error.connectionErrors.first.map { "\($0.error)" } ?? "cannot connect"
        }
        return "\(error)"
    }
}

extension Duration {
    /// Nanoseconds, saturating at Int64.max (a "no limit" duration stays representable).
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        guard seconds < Int64.max / 1_000_000_000 - 1 else { return Int64.max }
        return max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

import Foundation
import PMLL
import Testing

@Suite("Lock hierarchy", .serialized)
struct HierarchyTests {
    // MARK: compile time

    static let snippets: [String] = {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("CompileFail")
        return ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [])
            .filter { $0.hasSuffix(".swift") }.sorted().map { folder.appendingPathComponent($0).path }
    }()

    @Test func thereAreSnippetsOfBothKinds() throws {
        let texts = try Self.snippets.map { try String(contentsOfFile: $0, encoding: .utf8) }
        #expect(texts.filter { $0.hasPrefix("// expect: success") }.count >= 1)
        #expect(texts.filter { $0.hasPrefix("// expect-error: ") }.count >= 6)
    }

    @Test(arguments: snippets)
    func compileFailSuite(snippet: String) throws {
        let text = try String(contentsOfFile: snippet, encoding: .utf8)
        let firstLine = String(text.prefix { $0 != "\n" })
        let result = try Compiler.emitSIL(snippet)
        if firstLine == "// expect: success" {
            #expect(result.status == 0, "\(snippet) should compile:\n\(result.output)")
        } else {
            let expected = try #require(firstLine.components(separatedBy: "// expect-error: ").last)
            #expect(result.status != 0, "\(snippet) compiled but must not")
            let errors = result.output.split(separator: "\n").filter { $0.contains("error:") }
            #expect(errors.contains { $0.contains(expected) }, "\(snippet): no error containing '\(expected)' in:\n\(result.output)")
        }
    }

    // MARK: run time

    @Test func dynamicOutOfOrderIsRejectedAndLeavesNothingHeld() throws {
        let scratch = Scratch()
        let path = scratch.file("h.pool")
        let pool = try Pool.open(path: path)
        let package = try pool.lock(named: "p", level: .package)
        let registry = try pool.lock(named: "r", level: .registry)
        #expect(throws: PMLLError.hierarchyViolation(held: package.id, requested: registry.id)) {
            try package.withLock { _ in
                try registry.withLock { _ in Issue.record("acquired out of order") }
            }
        }
        #expect(package.currentHolder == nil)
        #expect(registry.currentHolder == nil)
        // Same level twice in nested scopes is out of order too.
        let other = try pool.lock(named: "q", level: .package)
        #expect(throws: PMLLError.hierarchyViolation(held: package.id, requested: other.id)) {
            try package.withLock { _ in try other.withLock { _ in } }
        }
        // Another process can take both at once: nothing leaked.
        for name in ["p", "r", "q"] {
            let child = try Child.worker("hold", "--pool", path, "--lock", name, "--level", name == "r" ? "registry" : "package", "--timeout", "2", "--seconds", "0")
            #expect(child.wait() == 0)
        }
    }

    @Test func inOrderDynamicNestingWorksAndRestoresState() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("o.pool"))
        let r = try pool.lock(named: "r", level: .registry)
        let f = try pool.lock(named: "f", level: .filesystem)
        let n = try pool.lock(named: "n", level: .network)
        try r.withLock { _ in try f.withLock { _ in try n.withLock { _ in } } }
        // After the scopes end the thread holds nothing: the registry may be taken again.
        try r.withLock { _ in }
        // A thrown error in the body releases and restores too.
        struct Boom: Error {}
        #expect(throws: Boom.self) { try f.withLock { _ in throw Boom() } }
        try r.withLock { _ in }
        #expect(f.currentHolder == nil)
    }

    @Test func secondRootCapabilityIsCaughtAtRunTime() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("root.pool"))
        let package = try pool.lock("pkg", Package.self)
        let registry = try pool.lock("reg", Registry.self)
        #expect(throws: PMLLError.hierarchyViolation(held: package.handle.id, requested: registry.handle.id)) {
            try pool.withLockContext { root in
                try root.withLock(package: package) { _ in
                    try pool.withLockContext { second in
                        try second.withLock(registry: registry) { _ in }
                    }
                }
            }
        }
        #expect(registry.handle.currentHolder == nil)
    }

    @Test func multiLockCallsUseCanonicalOrderAndOneLevel() throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("m.pool"))
        let b = try pool.lock(named: "b", level: .package), a = try pool.lock(named: "a", level: .package)
        let order = try pool.withLocks([b, a]) { grant in grant.acquisitions.map(\.lock.name) }
        #expect(order == ["a", "b"])
        let net = try pool.lock(named: "net", level: .network)
        #expect(throws: PMLLError.self) { try pool.withLocks([a, net]) { _ in } }
        #expect(throws: PMLLError.self) { try pool.withLocks([a, a]) { _ in } }
        // A multi-lock call inside a scope of the same level is out of order.
        #expect(throws: PMLLError.self) { try a.withLock { _ in try pool.withLocks([b]) { _ in } } }
    }

    @Test func asyncScopesAreCheckedAcrossAwait() async throws {
        let scratch = Scratch()
        let pool = try Pool.open(path: scratch.file("as.pool"))
        let package = try pool.lock(named: "p", level: .package)
        let registry = try pool.lock(named: "r", level: .registry)
        let files = try pool.lock(named: "f", level: .filesystem)
        await #expect(throws: PMLLError.hierarchyViolation(held: package.id, requested: registry.id)) {
            try await package.withLock { _ in
                try await Task.sleep(for: .milliseconds(5))   // may resume on another thread
                try await registry.withLock { _ in }
            }
        }
        // A synchronous scope inside an async one sees the async lock too.
        try await package.withLock { _ in
            try await Task.sleep(for: .milliseconds(1))
            #expect(throws: PMLLError.self) { try registry.withLock { _ in } }
            try holdBriefly(files)   // in order: allowed
        }
        #expect(package.currentHolder == nil)
    }

    @Test func typedNestingAcrossProcessesDoesNotDeadlock() throws {
        let scratch = Scratch()
        let pool = scratch.file("nest.pool"), file = scratch.file("counter")
        let children = try (0..<3).map { _ in try Child.worker("nested", "--pool", pool, "--file", file, "--iterations", "200") }
        for child in children { #expect(child.wait(timeout: 120) == 0) }
        #expect(readU64(file, field: 0) == 600)
    }
}

/// A synchronous scope (from async code the async overload would be chosen).
func holdBriefly(_ lock: LockHandle) throws {
    try lock.withLock { _ in }
}

/// Invokes swiftc on a snippet against the built PMLL module.
enum Compiler {
    static func emitSIL(_ file: String) throws -> (status: Int32, output: String) {
        let bin = Binaries.directory
        let scratch = URL(fileURLWithPath: bin).deletingLastPathComponent().deletingLastPathComponent().path
        var arguments = ["swiftc", "-emit-sil", "-o", "/dev/null", "-I", bin + "/Modules"]
        // C modules the PMLL module depends on: ours (generated maps) and the dependencies' own.
        let fm = FileManager.default
        for entry in (try? fm.contentsOfDirectory(atPath: bin)) ?? [] where entry.hasSuffix(".build") {
            let map = "\(bin)/\(entry)/module.modulemap"
            if fm.fileExists(atPath: map) { arguments += ["-Xcc", "-fmodule-map-file=\(map)"] }
        }
        let checkouts = scratch + "/checkouts"
        for package in (try? fm.contentsOfDirectory(atPath: checkouts)) ?? [] {
            let sources = "\(checkouts)/\(package)/Sources"
            for target in (try? fm.contentsOfDirectory(atPath: sources)) ?? [] {
                let map = "\(sources)/\(target)/include/module.modulemap"
                if fm.fileExists(atPath: map) { arguments += ["-Xcc", "-fmodule-map-file=\(map)"] }
            }
        }
        arguments.append(file)
        let child = try Child("/usr/bin/env", arguments)
        let status = child.wait(timeout: 300)
        return (status, child.stdout + "\n" + child.stderr)
    }
}

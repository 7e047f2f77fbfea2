import Foundation
import Testing

/// The layer graph in Docs/Architecture.md is the one Package.swift declares, and no source
/// file of a library target imports a layer its target does not depend on (SwiftPM can let
/// such an import compile when the other module happens to be built first).
@Suite(.serialized) struct LayerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let layers = ["CPMLL", "PMLLCore", "PMLLLocks", "PMLLStore", "PMLLQueues", "PMLLFileBatches", "PMLL", "CPMLLABI", "PMLLCABI", "PMLLEtcd"]

    /// Each library target's dependencies among the project's own targets, from
    /// `swift package dump-package` (run once, with a scratch path of its own: the running
    /// `swift test` holds the lock on .build; its JSON goes to a file, not a pipe).
    static let declaredGraph: Result<[String: Set<String>], CocoaError> = {
        let scratch = Scratch()
        let out = scratch.file("manifest.json")
        guard let result = try? run("/bin/sh", ["-c", "swift package --package-path \"$0\" --scratch-path \"$1\" dump-package > \"$2\"", root, scratch.path, out], timeout: 120),
              result.status == 0, let data = FileManager.default.contents(atPath: out),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            return .failure(CocoaError(.fileReadCorruptFile))
        }
        var graph: [String: Set<String>] = [:]
        for target in json["targets"] as? [[String: Any]] ?? [] {
            guard let name = target["name"] as? String, layers.contains(name) else { continue }
            let deps = (target["dependencies"] as? [[String: Any]] ?? []).compactMap { dep -> String? in
                for key in ["byName", "target"] { if let v = dep[key] as? [Any], let n = v.first as? String { return n } }
                return nil
            }
            graph[name] = Set(deps.filter(layers.contains))
        }
        return .success(graph)
    }()

    func declared() throws -> [String: Set<String>] { try Self.declaredGraph.get() }

    /// The ```layers block of Docs/Architecture.md: `TARGET -> DEP, DEP`.
    func documented() throws -> [String: Set<String>] {
        let text = try String(contentsOfFile: Self.root + "/Docs/Architecture.md", encoding: .utf8)
        let block = try #require(text.components(separatedBy: "```layers\n").dropFirst().first?.components(separatedBy: "```").first)
        var graph: [String: Set<String>] = [:]
        for line in block.split(separator: "\n") {
            let parts = line.components(separatedBy: "->")
            guard parts.count == 2 else { continue }
            let deps = parts[1].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && $0 != "-" }
            graph[parts[0].trimmingCharacters(in: .whitespaces)] = Set(deps)
        }
        return graph
    }

    @Test func architectureDocumentShowsTheTargetGraph() throws {
        #expect(try documented() == declared())
    }

    @Test func sourcesImportOnlyTheLayersTheirTargetDependsOn() throws {
        let graph = try declared()
        for (target, deps) in graph where !target.hasPrefix("CPMLL") {
            let dir = Self.root + "/Sources/" + target
            let files = FileManager.default.enumerator(atPath: dir)?.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") } ?? []
            #expect(!files.isEmpty, "no sources for \(target)")
            for file in files {
                let text = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
                for line in text.split(separator: "\n") {
                    let words = line.split(separator: " ")
                    guard let i = words.firstIndex(of: "import"), i + 1 < words.count, words[..<i].allSatisfy({ ["public", "package", "internal", "@_exported", "@testable"].contains($0) }) else { continue }
                    let module = String(words[i + 1])
                    if Self.layers.contains(module) { #expect(deps.contains(module), "\(target)/\(file) imports \(module), which \(target) does not depend on") }
                }
            }
        }
    }
}

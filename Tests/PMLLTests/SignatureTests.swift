import Foundation
import Testing
import PMLL

/// Minisign signatures made by the real `minisign` tool (Debian's), checked before anything is
/// written: `pmll batch apply --trusted-key` and `Transaction.set(_:_:signature:trusted:)`.
@Suite("Signatures", .serialized)
struct SignatureTests {
    final class Keys {
        let scratch = Scratch()
        var dir: String { scratch.path }
        init() throws {
            for name in ["publisher", "stranger"] {
                let r = try run("/usr/bin/minisign", ["-G", "-W", "-p", scratch.file("\(name).pub"), "-s", scratch.file("\(name).key")])
                guard r.status == 0 else { throw CocoaError(.fileWriteUnknown) }
            }
        }
        func sign(_ file: String, as name: String = "publisher", legacy: Bool = false, output: String? = nil) throws {
            let r = try run("/usr/bin/minisign", ["-S", "-s", scratch.file("\(name).key"), "-m", file] + (legacy ? ["-l"] : []) + (output.map { ["-x", $0] } ?? []))
            #expect(r.status == 0, "\(r.stderr)")
        }
    }

    @Test func batchesAreAppliedOnlyWithAValidSignatureByATrustedKey() throws {
        let keys = try Keys()
        let pool = keys.scratch.file("s.pool"), tree = keys.scratch.file("tree"), batch = keys.scratch.file("batch.json")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        func apply(_ extra: [String], file: String? = nil) throws -> (status: Int32, stdout: String, stderr: String) {
            try run(Binaries.pmll, ["batch", "apply", "--pool", pool, "--root", tree, "--atomic", "--trusted-key", keys.scratch.file("publisher.pub")] + extra + [file ?? batch])
        }
        func treeFiles() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: tree).sorted() }

        // Prehashed (minisign's default) and legacy signatures are both accepted.
        try #"[{"op": "write", "path": "one.txt", "data": "1"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        try keys.sign(batch)
        var r = try apply([])
        #expect(r.status == 0, "\(r.stderr)")
        try #"[{"op": "write", "path": "two.txt", "data": "2"}]"#.write(toFile: batch, atomically: true, encoding: .utf8)
        try keys.sign(batch, legacy: true, output: batch + ".legacy")
        r = try apply(["--signature", batch + ".legacy"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try treeFiles() == ["one.txt", "two.txt"])
        let signed = try Data(contentsOf: URL(fileURLWithPath: batch))

        // Each refusal: exit 77, one pmll: line, nothing written.
        func refused(_ extra: [String], _ reason: String, file: String? = nil) throws {
            let r = try apply(extra, file: file)
            #expect(r.status == 77, "\(reason): \(r.status) \(r.stderr)")
            #expect(r.stderr.hasPrefix("pmll: signature of ") && r.stderr.contains(reason), "\(r.stderr)")
            #expect(try treeFiles() == ["one.txt", "two.txt"], "nothing written")
        }
        // A flipped byte in the content.
        var altered = signed
        altered[altered.count - 4] ^= 0x01
        try altered.write(to: URL(fileURLWithPath: batch))
        try refused(["--signature", batch + ".legacy"], "does not match the content")
        try signed.write(to: URL(fileURLWithPath: batch))
        // A flipped byte in the signature (its base64 line).
        var lines = try String(contentsOfFile: batch + ".legacy", encoding: .utf8).components(separatedBy: "\n")
        var sigLine = Array(lines[1])
        sigLine[40] = sigLine[40] == "A" ? "B" : "A"
        lines[1] = String(sigLine)
        try lines.joined(separator: "\n").write(toFile: batch + ".bad", atomically: true, encoding: .utf8)
        try refused(["--signature", batch + ".bad"], "does not match")
        // An altered trusted comment.
        lines = try String(contentsOfFile: batch + ".legacy", encoding: .utf8).components(separatedBy: "\n")
        lines[2] = "trusted comment: approved by nobody"
        try lines.joined(separator: "\n").write(toFile: batch + ".comment", atomically: true, encoding: .utf8)
        try refused(["--signature", batch + ".comment"], "trusted comment")
        // Signed by a key that is not trusted.
        try keys.sign(batch, as: "stranger", output: batch + ".stranger")
        try refused(["--signature", batch + ".stranger"], "which is not trusted")
        // No signature at all.
        try #"[{"op": "write", "path": "three.txt", "data": "3"}]"#.write(toFile: keys.scratch.file("unsigned.json"), atomically: true, encoding: .utf8)
        try refused([], "no signature", file: keys.scratch.file("unsigned.json"))
        // Not a signature file.
        try "hello\n".write(toFile: batch + ".junk", atomically: true, encoding: .utf8)
        try refused(["--signature", batch + ".junk"], "not a minisign signature")
    }

    @Test func aSignedStateValueIsVerifiedBeforeItIsBuffered() throws {
        let keys = try Keys()
        let value = keys.scratch.file("value")
        try "zlib 1.3.1 sha256:ab12".write(toFile: value, atomically: true, encoding: .utf8)
        try keys.sign(value)
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: value)))
        let signature = try MinisignSignature(text: try String(contentsOfFile: value + ".minisig", encoding: .utf8))
        let trusted = [try MinisignPublicKey(text: try String(contentsOfFile: keys.scratch.file("publisher.pub"), encoding: .utf8))]
        let pool = try Pool.open(path: keys.scratch.file("v.pool"))
        try pool.transaction { tx in try tx.set("pkg/zlib/manifest", bytes, signature: signature, trusted: trusted) }
        #expect(try pool.value(for: "pkg/zlib/manifest") == bytes)
        var altered = bytes
        altered[0] ^= 0x20
        #expect(throws: PMLLError.self) {
            try pool.transaction { tx in
                try tx.set("pkg/zlib/other", "side effect")
                try tx.set("pkg/zlib/manifest", altered, signature: signature, trusted: trusted)
            }
        }
        #expect(try pool.value(for: "pkg/zlib/manifest") == bytes)
        #expect(try pool.value(for: "pkg/zlib/other") == nil, "the whole transaction was discarded")
    }
}

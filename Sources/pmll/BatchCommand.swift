#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PMLL
import PMLLBatchJSON

struct BatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "batch", abstract: "Apply file batches (io_uring, atomic on request).",
                                                    subcommands: [BatchApply.self])
}

struct BatchApply: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Apply the JSON list of file operations in FILE below --root.",
        discussion: """
            Each entry is an object with "op" (write, replace, delete, mkdir, rename, fsync), "path" \
            (relative to the root), and as the op needs "data" (UTF-8 text) or "base64", "mode" \
            (octal string such as "0644") and "to" (rename target). Unknown ops or fields are errors \
            naming the entry. With --atomic the batch is applied completely or not at all, even if \
            this process dies (recovered on the next open or by `pmll recover`); without, each entry \
            is applied on its own and reported. The backend (uring or syscalls) and how files were \
            created (by name or unnamed) are printed; PMLL_IO_BACKEND=uring|syscalls and \
            PMLL_STAGING=named|unnamed force them. Exit 1 if an entry failed in best-effort mode. \
            With --trusted-key, the batch file must carry a valid minisign signature (--signature, \
            default FILE.minisig) by one of those keys, checked before anything is read as a batch \
            or written (exit 77 otherwise): a publisher signs with `minisign -Sm batch.json`.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: "Directory the paths are relative to.") var root = "."
    @Flag(help: "All or nothing.") var atomic = false
    @Flag(help: "Print the report as JSON.") var json = false
    @Option(help: ArgumentHelp("Public key (minisign .pub file) the batch must be signed with (repeatable).", valueName: "FILE"))
    var trustedKey: [String] = []
    @Option(help: ArgumentHelp("The batch's minisign signature (default: FILE.minisig when --trusted-key is given).", valueName: "FILE"))
    var signature: String?
    @Argument(help: "JSON file with the operations ('-' for standard input).") var file: String

    func validate() throws {
        if trustedKey.isEmpty == false && signature == nil && file == "-" { throw ValidationError("a batch read from standard input needs --signature FILE") }
    }

    func run() throws {
        guard let bytes = file == "-" ? FileIO.readAll(0) : FileIO.contents(of: file) else {
            throw CommandFailure(message: "cannot read batch file '\(file)'", status: ExitStatus.noPool)
        }
        let pool = try poolArguments.open()
        // Keys from the command line, else those of the policy's signature rule for the root.
        var signer: MinisignPublicKey?
        do {
            var keys = try trustedKeys()
            if keys.isEmpty { keys = try pool.policyKeys(for: .batch(root: Pool.absolute(root))) }
            if !keys.isEmpty { signer = try verifySignature(of: bytes, keys: keys) }
        } catch let error as PMLLError {
            if case .signatureRejected(_, let reason) = error { pool.audit(.signatureRejected, .denied, "batch '\(file)' for root '\(root)': \(reason)") }
            throw error
        }
        var batch = try FileBatch.decode(json: bytes)
        batch.signer = signer?.base64
        let report = try pool.apply(batch, root: root, atomic: atomic)
        if json {
            try printJSON(report)
        } else {
            print("batch: \(batch.operations.count) operations, \(report.atomic ? "atomic" : "best effort"), backend \(report.backend.rawValue), files created \(report.creation == .named ? "by name" : "unnamed"), \((Double(report.nanoseconds) / 1e6).fixed(2)) ms")
            for (i, result) in report.results.enumerated() where !result.isApplied { print("entry \(i): \(result)") }
        }
        if report.results.contains(where: { !$0.isApplied }) { throw ExitCode(1) }
    }

    func trustedKeys() throws -> [MinisignPublicKey] {
        try trustedKey.map { path throws -> MinisignPublicKey in
            guard let text = FileIO.contents(of: path) else {
                throw CommandFailure(message: "cannot read trusted key '\(path)'", status: ExitStatus.noPool)
            }
            return try MinisignPublicKey(text: String(decoding: text, as: UTF8.self), source: "trusted key '\(path)'")
        }
    }

    /// Before the batch is parsed or anything written: its signature, by a trusted key.
    func verifySignature(of bytes: [UInt8], keys: [MinisignPublicKey]) throws -> MinisignPublicKey {
        if file == "-" && signature == nil {
            throw PMLLError.signatureRejected(subject: "batch from standard input", reason: "a signature is required: give --signature FILE")
        }
        let signatureFile = signature ?? file + ".minisig"
        guard let text = FileIO.contents(of: signatureFile) else {
            throw PMLLError.signatureRejected(subject: "batch '\(file)'", reason: "no signature: cannot read '\(signatureFile)'")
        }
        let parsed = try MinisignSignature(text: String(decoding: text, as: UTF8.self), source: "batch '\(file)' ('\(signatureFile)')")
        return try Minisign.verify(bytes, signature: parsed, trusted: keys, subject: "batch '\(file)'")
    }
}

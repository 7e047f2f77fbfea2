import PMLLStressSupport
#if canImport(Glibc)
import Glibc
#endif

// `pmll-fuzz` two ways, from the same sources:
//  - built by Stress/fuzz with -sanitize=fuzzer,address and -DPMLL_FUZZ: libFuzzer's own main
//    drives `LLVMFuzzerTestOneInput`, coverage-guided, on the target $PMLL_FUZZ_TARGET;
//  - built plainly (swift build): `pmll-fuzz TARGET [FILE|DIR]... [--random N] [--seed S]`
//    replays inputs and N random mutations of them, for the test suite and to reproduce a
//    finding; `pmll-fuzz TARGET --write-seeds DIR` writes the target's seed inputs.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget.run(bytes)
    return 0
}

/// One line on stderr.
func say(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// libFuzzer owns the command line, so the target comes from the environment.
let selectedTarget: FuzzTarget = {
    let name = getenv("PMLL_FUZZ_TARGET").map { String(cString: $0) } ?? "batch-json"
    guard let target = FuzzTarget(rawValue: name) else {
        say("pmll-fuzz: unknown PMLL_FUZZ_TARGET '\(name)' (\(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))")
        exit(64)
    }
    return target
}()

#if PMLL_FUZZ
import CPMLLFuzzDriver

/// SwiftPM links an executable's entry point under this name: hand the command line to
/// libFuzzer.
@_cdecl("PMLLFuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    var count = argc
    var vector: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return LLVMFuzzerRunDriver(&count, &vector) { data, size in fuzzOne(data, size) }
}
#else
@main
struct Replay {
    static func main() {
        var args = Array(CommandLine.arguments.dropFirst())
        guard let name = args.first, let target = FuzzTarget(rawValue: name) else {
            say("usage: pmll-fuzz TARGET [FILE|DIR]... [--random N] [--seed S] | TARGET --write-seeds DIR")
            exit(64)
        }
        args.removeFirst()
        var random = 0, seed: UInt64 = 1, inputs: [[UInt8]] = [], writeSeeds: String?
        var i = 0
        while i < args.count {
            switch args[i] {
            case "--random": random = Int(args[i + 1]) ?? 0; i += 2
            case "--seed": seed = UInt64(args[i + 1]) ?? 1; i += 2
            case "--write-seeds": writeSeeds = args[i + 1]; i += 2
            default: inputs += readInputs(args[i]); i += 1
            }
        }
        if let writeSeeds {
            mkdir(writeSeeds, 0o755)
            for (n, bytes) in target.seeds.enumerated() { writeFile(writeSeeds + "/seed-\(n)", bytes) }
            return
        }
        if inputs.isEmpty { inputs = target.seeds }
        for input in inputs { target.run(input) }
        var rng = SplitMix(seed: seed)
        for _ in 0..<random { target.run(mutate(inputs[Int(rng.next() % UInt64(inputs.count))], &rng)) }
        print("pmll-fuzz \(target.rawValue): \(inputs.count) inputs and \(random) random mutations, no finding")
    }

    static func readInputs(_ path: String) -> [[UInt8]] {
        var st = stat()
        guard stat(path, &st) == 0 else { return [] }
        if st.st_mode & S_IFMT != S_IFDIR { return readFile(path).map { [$0] } ?? [] }
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted().compactMap { readFile(path + "/" + $0) }
    }

    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return bytes }
            bytes += chunk[..<n]
        }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// A few byte flips, insertions, deletions or interesting values: not coverage-guided,
    /// a smoke test of the same entry point.
    static func mutate(_ input: [UInt8], _ rng: inout SplitMix) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + Int(rng.next() % 4)) {
            let at = bytes.isEmpty ? 0 : Int(rng.next() % UInt64(bytes.count))
            switch rng.next() % 5 {
            case 0 where !bytes.isEmpty: bytes[at] ^= UInt8(1 << (rng.next() % 8))
            case 1: bytes.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
            case 2 where !bytes.isEmpty: bytes.remove(at: at)
            case 3 where !bytes.isEmpty: bytes[at] = [0x00, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B, 0x5B][Int(rng.next() % 8)]
            default: bytes += (0..<Int(rng.next() % 8)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            }
        }
        return bytes
    }
}
#endif

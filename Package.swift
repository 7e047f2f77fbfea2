// swift-tools-version: 6.1
import PackageDescription
#if canImport(Glibc)
import Glibc
#endif

// One set of Swift settings for every target: Swift 6 language mode (strict concurrency on).
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// The `pmll` executable's link (start-up, issue 23; Docs/Benchmarks.md). The Swift toolchain's
// static-stdlib link exports every symbol of the executable's own modules (7,900 dynamic
// symbols), which nothing loads code against but the loader searches and `dladdr` scans
// linearly at every start. Relative relocations are packed (DT_RELR, glibc 2.36 and later):
// 9 KB to read instead of 1 MB.
//
// `PMLL_NO_PIE=1 swift build ...` links the `pmll` executable position-dependent: about 0.4 ms
// less start-up (no relocations to apply, no copy-on-write page per relocated page), at the
// price of ASLR for the executable's own code and data. Off by default.
let pmllLinkFlags = ["-static-stdlib", "-L\(Context.packageDirectory)/CSupport/StaticLibs",
                     "-l_FoundationCShims", "-l_FoundationCollections", "-use-ld=lld",
                     "-Xlinker", "--no-export-dynamic"]
    + (glibcHasRELR ? ["-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"] : [])
    + (Context.environment["PMLL_NO_PIE"] == "1" ? ["-Xclang-linker", "-no-pie"] : [])

/// A binary with packed relocations needs a loader that knows them (glibc 2.36, Debian 12).
var glibcHasRELR: Bool {
    #if canImport(Glibc)
    var text = [UInt8](repeating: 0, count: 64)   // "glibc 2.36"
    let length = text.withUnsafeMutableBufferPointer { confstr(Int32(_CS_GNU_LIBC_VERSION), $0.baseAddress, $0.count) }
    guard length > 0 else { return false }
    let version = String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
    let parts = version.split(separator: " ").last?.split(separator: ".").compactMap { Int($0) } ?? []
    return parts.count >= 2 && (parts[0], parts[1]) >= (2, 36)
    #else
    return false
    #endif
}

let package = Package(
    name: "PMLL",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "PMLL", targets: ["PMLL"]),
        .executable(name: "pmll", targets: ["pmll"]),
        .executable(name: "pmll-worker", targets: ["PMLLWorker"]),
        .executable(name: "pmll-bench", targets: ["PMLLBench"]),
        .executable(name: "pmll-bench-holder", targets: ["PMLLBenchHolder"]),
        .executable(name: "pmll-crash", targets: ["PMLLCrash"]),
        .executable(name: "pmll-stress", targets: ["PMLLStress"]),
        .executable(name: "pmll-fuzz", targets: ["PMLLFuzz"]),
        // The C interface (Docs/C-API.md): Stress/install-c-library installs it as libpmll.so
        // with pmll.h and pmll.pc.
        .library(name: "pmll-c", type: .dynamic, targets: ["PMLLCABI"]),
        // The etcd backend (Docs/Etcd.md): optional, so that users of the local pool do not
        // build the networking stack. `pmll` hands etcd:// pools to `pmll-etcd`.
        .library(name: "PMLLEtcd", targets: ["PMLLEtcd"]),
        .executable(name: "pmll-etcd", targets: ["pmll-etcd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
    ],
    targets: [
        // Thin wrappers over futex, OFD locks, libpmem and liburing, plus the shared-file layout.
        .target(
            name: "CPMLL",
            path: "CSupport/CPMLL",
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("sodium"), .linkedLibrary("dl")]
        ),
        // Peers measured by the benchmarks (glibc robust mutex, flock, OFD locks). Not part of the library.
        .target(
            name: "CPMLLPeers",
            path: "CSupport/CPMLLPeers",
            linkerSettings: [.linkedLibrary("sqlite3"), .linkedLibrary("pmemobj")]
        ),
        // The library in layers; each depends only on those below it (Docs/Architecture.md,
        // checked by Stress/check-layers). PMLL is the facade users import.
        // Core: the pool file, its header and layout, the process table, persistence, the
        // attach protocol, errors, and the waiter thread.
        .target(
            name: "PMLLCore",
            dependencies: [
                "CPMLL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Locks: the lock word protocol, the lock table, scopes, status and the hierarchy.
        .target(
            name: "PMLLLocks",
            dependencies: [
                "CPMLL", "PMLLCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // Store: the state store and its undo-logged transactions.
        .target(
            name: "PMLLStore",
            dependencies: ["CPMLL", "PMLLCore", "PMLLLocks", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // Queues: hardened operation queues (tickets, records, retries, recovery).
        .target(
            name: "PMLLQueues",
            dependencies: ["CPMLL", "PMLLCore", "PMLLLocks", "PMLLStore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings
        ),
        // File batches: plan, journal, atomic protocol, io_uring and syscall backends.
        .target(
            name: "PMLLFileBatches",
            dependencies: [
                "CPMLL", "PMLLCore", "PMLLLocks", "PMLLStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // The facade: re-exports the public API; opening, recovery, status and check in one
        // fixed order over the layers.
        .target(
            name: "PMLL",
            dependencies: [
                "CPMLL", "PMLLCore", "PMLLLocks", "PMLLStore", "PMLLQueues", "PMLLFileBatches",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The etcd backend: locks, fencing tokens and state in an etcd cluster, over etcd's
        // JSON gateway. Beside the facade, not under it: nothing local depends on it.
        .target(
            name: "PMLLEtcd",
            dependencies: [
                "PMLLCore", "PMLLLocks", "PMLLStore", "PMLLQueues", "PMLL",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        // flock(1)'s command line, for `pmll flock` on both backends.
        .target(name: "PMLLFlockOptions", swiftSettings: swiftSettings),
        .executableTarget(
            name: "pmll-etcd",
            dependencies: [
                "PMLLEtcd", "PMLLCore", "PMLLLocks", "PMLLFlockOptions",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // The C interface: pmll.h (the contract, installed), the per-thread state C keeps,
        // and the Swift entry points over the facade. Only the header's names are exported
        // (pmll.map).
        .target(name: "CPMLLABI", path: "CSupport/CPMLLABI", exclude: ["pmll.map", "pmll.pc.in"]),
        .target(
            name: "PMLLCABI",
            dependencies: ["PMLL", "PMLLCore", "PMLLLocks", "PMLLStore", "PMLLQueues", "CPMLL", "CPMLLABI"],
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags([
                "-Xlinker", "--version-script=\(Context.packageDirectory)/CSupport/CPMLLABI/pmll.map",
                "-Xlinker", "-soname=libpmll.so.0",
            ])]
        ),
        // The batch file format of `pmll batch apply` (JSON is the command's concern, not the
        // library's); a target of its own so that the fuzzer reaches the same decoder.
        .target(
            name: "PMLLBatchJSON",
            dependencies: ["PMLL"],
            swiftSettings: swiftSettings
        ),
        // The command: scripts run it in loops (one `pmll lock` per package), so its start-up
        // is measured (`pmll-bench startup`). The Swift runtime and FoundationEssentials are
        // linked in statically: 7.7 ms instead of 11.4 ms per `pmll lock -- /bin/true`
        // (Docs/Benchmarks.md). The flag is on this executable only, which no other package
        // builds as a dependency (the library product stays free of unsafe flags).
        .executableTarget(
            name: "pmll",
            dependencies: [
                "PMLL", "PMLLCore", "CPMLL", "PMLLBatchJSON", "PMLLFlockOptions",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings,
            // Start-up (issue 23): the Swift runtime, libstdc++, liburing and libsodium linked
            // in (CSupport/StaticLibs/README.md), so that a `pmll` process loads no Swift or C++
            // shared objects.
            linkerSettings: [.unsafeFlags(pmllLinkFlags)]
        ),
        .executableTarget(
            name: "PMLLWorker",
            dependencies: [
                "PMLL", "CPMLL", "PMLLStressSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            path: "Stress/Worker",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "PMLLBench",
            dependencies: [
                "PMLL", "CPMLL", "CPMLLPeers", "PMLLStressSupport", "PMLLEtcd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            path: "Stress/Bench",
            swiftSettings: swiftSettings
        ),
        // The glibc side's small holder in `pmll-bench locks` takeover rows (C, one thread).
        .executableTarget(
            name: "PMLLBenchHolder",
            path: "Stress/BenchHolder"
        ),
        // Small pieces the stress tools share (seeded RNG).
        .target(
            name: "PMLLStressSupport",
            dependencies: [
                "CPMLL",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Stress/Support",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "PMLLStress",
            dependencies: [
                "PMLL", "CPMLL", "PMLLStressSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Stress/StressHarness",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "PMLLCrash",
            dependencies: [
                "PMLL", "PMLLStressSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Stress/Crash",
            swiftSettings: swiftSettings
        ),
        // libFuzzer entry points (Stress/fuzz builds them with -sanitize=fuzzer,address and
        // -DPMLL_FUZZ); the plain build replays a corpus and random mutations (the test suite).
        .target(name: "CPMLLFuzzDriver", path: "Stress/FuzzSupport"),
        .executableTarget(
            name: "PMLLFuzz",
            dependencies: ["PMLL", "PMLLCore", "PMLLFileBatches", "PMLLBatchJSON", "CPMLL", "CPMLLFuzzDriver", "PMLLStressSupport"],
            path: "Stress/Fuzz",
            exclude: ["corpus"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PMLLTests",
            dependencies: ["PMLL", "PMLLCore", "PMLLLocks", "PMLLStore", "PMLLQueues", "PMLLFileBatches", "CPMLL", "PMLLStressSupport", "PMLLEtcd"],
            swiftSettings: swiftSettings
        ),
    ]
)

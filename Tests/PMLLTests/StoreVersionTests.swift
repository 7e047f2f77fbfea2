import Foundation
import CPMLL
import PMLL
import PMLLCore
import PMLLStressSupport
import Testing

/// Store version 2 (256-byte key slots, records of up to 216 bytes inline) and the version 1
/// stores of pools created before it (128-byte slots, 88 bytes inline), which this build still
/// opens, writes and grows at their own width (Docs/PoolFormat.md "Key slots").
@Suite("Store versions")
struct StoreVersionTests {
    /// What every build before version 2 recorded in its pools' headers (read from a pool made
    /// by `pmll` of `168cccf`): a version 1 store must keep being recognised by it, or every
    /// existing pool would be refused as incompatible.
    static let narrowSignatureOfEarlierBuilds: UInt64 = 0x2f5a_02d7_64f6_906d

    @Test func theNarrowSignatureIsTheOneEarlierBuildsWrote() {
        #expect(pmll_layout_signature_of_store(PMLL_STORE_VERSION_NARROW) == Self.narrowSignatureOfEarlierBuilds)
        #expect(pmll_layout_signature() == pmll_layout_signature_of_store(PMLL_STORE_VERSION))
        #expect(pmll_layout_signature() != Self.narrowSignatureOfEarlierBuilds)
        #expect(pmll_layout_signature_of_store(3) == 0 && pmll_layout_signature_of_store(0) == 0)
        #expect(pmll_key_slot_width(PMLL_STORE_VERSION) == 256 && pmll_key_slot_width(PMLL_STORE_VERSION_NARROW) == 128)
    }

    static func options(version: UInt32) -> PoolOptions {
        var options = PoolOptions()
        options.size = 4 << 20
        options.keyCapacity = 16
        options.queueCapacity = 2
        options.storeVersion = version
        return options
    }

    /// Records up to the slot's inline room take no blocks, one byte more takes blocks, at
    /// either width; every key reads back after the index grew (at its width) and after a
    /// reopen by another process, and `check` is clean.
    @Test(arguments: [PMLL_STORE_VERSION, PMLL_STORE_VERSION_NARROW])
    func recordsUpToTheSlotsRoomStayInline(version: UInt32) throws {
        let scratch = Scratch()
        let path = scratch.file("v\(version).pool")
        let room = Int(pmll_key_slot_width(version)) - Int(PMLL_KEY_SLOT_HEAD)
        let pool = try Pool.open(path: path, options: Self.options(version: version))
        let fits = [UInt8](repeating: 0x61, count: room - 3)          // key "fit" + value = room
        let over = [UInt8](repeating: 0x62, count: room - 3)          // key "big" + 1 byte more
        try pool.transaction { tx in try tx.set("fit", fits) }
        #expect(try pool.storeUsage().blocksUsed == 0)
        try pool.transaction { tx in try tx.set("big", over + [0x63]) }
        #expect(try pool.storeUsage().blocksUsed == 1)

        // Past 16 slots: the index grows (twice), at the store's own width.
        let hundred = [UInt8](repeating: 0x61, count: 100)
        for n in 0..<40 { try pool.transaction { tx in try tx.set("pkg/\(n)", Array("status of \(n) ".utf8) + hundred) } }
        let usage = try pool.storeUsage()
        #expect(usage.keyCapacity >= 64 && usage.keySlotBytes == Int(pmll_key_slot_width(version)))
        #expect(usage.blocksUsed == (version == PMLL_STORE_VERSION ? 1 : 41), "100-byte values: inline only in 256-byte slots")
        #expect(try pool.value(for: "fit") == fits)
        #expect(try pool.value(for: "big") == over + [0x63])
        for n in 0..<40 { #expect(try pool.value(for: "pkg/\(n)") == Array("status of \(n) ".utf8) + hundred) }
        #expect(try pool.check().problems.isEmpty)

        let get = try run(Binaries.pmll, ["state", "get", "--pool", path, "pkg/39"])
        #expect(get.status == 0 && get.stdout == "status of 39 " + String(repeating: "a", count: 100))
        #expect(try run(Binaries.pmll, ["check", "--pool", path]).status == 0)
        let status = try run(Binaries.pmll, ["status", "--pool", path, "--json"])
        #expect(status.status == 0 && status.stdout.contains("\"keySlotBytes\" : \(pmll_key_slot_width(version))"), "\(status.stdout)")
    }

    /// A pool created with 128-byte slots keeps them: its header's signature, its superblock,
    /// and the width of the index areas its growths make.
    @Test func aNarrowPoolKeepsItsSignatureAndWidth() throws {
        let scratch = Scratch()
        let path = scratch.file("n.pool")
        do {
            let pool = try Pool.open(path: path, options: Self.options(version: PMLL_STORE_VERSION_NARROW))
            for n in 0..<100 { try pool.transaction { tx in try tx.set("k\(n)", [UInt8(n)]) } }
        }
        #expect(readU64(path, field: 120 / 8) == Self.narrowSignatureOfEarlierBuilds)
        // Opened without asking for a version: the store's own is used, nothing rewritten.
        let pool = try Pool.open(path: path)
        #expect(try pool.storeUsage().keySlotBytes == 128)
        for n in 100..<300 { try pool.transaction { tx in try tx.set("k\(n)", [UInt8(n % 256)]) } }
        #expect(try pool.storeUsage().keySlotBytes == 128 && pool.storeUsage().keyCapacity >= 512)
        for n in 0..<300 { #expect(try pool.value(for: "k\(n)") == [UInt8(n % 256)]) }
        #expect(try pool.check().problems.isEmpty)
        #expect(readU64(path, field: 120 / 8) == Self.narrowSignatureOfEarlierBuilds)
    }

    /// A header whose signature names one store version over a superblock of the other is
    /// damage: reading slots at the wrong width would misread every key. Refused, untouched.
    @Test func aSignatureThatDisagreesWithTheSuperblockIsCorruption() throws {
        let scratch = Scratch()
        for version in [PMLL_STORE_VERSION, PMLL_STORE_VERSION_NARROW] {
            let path = scratch.file("d\(version).pool")
            do {
                let pool = try Pool.open(path: path, options: Self.options(version: version))
                try pool.transaction { tx in try tx.set("a", [1]) }
            }
            let other = version == PMLL_STORE_VERSION ? PMLL_STORE_VERSION_NARROW : PMLL_STORE_VERSION
            try editHeader(path) { $0.pointee.layout_signature = pmll_layout_signature_of_store(other) }
            expectUntouched(path) {
                #expect(throws: PMLLError.corruptPool(path: path, reason: "state store version \(version) disagrees with the header's layout signature")) {
                    try Pool.open(path: path)
                }
            }
            let cli = try run(Binaries.pmll, ["state", "get", "--pool", path, "a"])
            #expect(cli.status == 65 && cli.stderr.hasPrefix("pmll: ") && cli.stderr.contains("disagrees with the header's layout signature"), "\(cli.stderr)")
        }
    }
}

import Foundation
import Testing

/// The configuration file: precedence of its sources, every kind of mistake as one `pmll:`
/// line naming file, line and key with exit 78, and settings that take effect.
@Suite("Configuration", .serialized)
struct ConfigTests {
    /// `pmll config show --json` as key → (value, source).
    static func show(_ arguments: [String], environment: [String: String]) throws -> [String: (value: String, source: String)] {
        let r = try run(Binaries.pmll, ["config", "show", "--json"] + arguments, environment: environment)
        #expect(r.status == 0, "\(r.stderr)")
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: String]])
        return Dictionary(uniqueKeysWithValues: rows.map { ($0["key"]!, ($0["value"]!, $0["source"]!)) })
    }

    @Test func sourcesOverrideEachOtherInTheDocumentedOrder() throws {
        let scratch = Scratch()
        let xdg = scratch.file("xdg")
        try FileManager.default.createDirectory(atPath: xdg + "/pmll", withIntermediateDirectories: true)
        let user = xdg + "/pmll/config.json"
        try #"{"pool": {"path": "/tmp/from-user.pool", "key_capacity": 8192}, "queue": {"max_retries": 5}}"#.write(toFile: user, atomically: true, encoding: .utf8)
        let explicit = scratch.file("explicit.json")
        try #"{"pool": {"lock_capacity": 2048}}"#.write(toFile: explicit, atomically: true, encoding: .utf8)
        let base = ["XDG_CONFIG_HOME": xdg, "PMLL_POOL": "", "PMLL_CONFIG": ""]

        var s = try Self.show([], environment: base)
        #expect(s["pool.path"]! == ("/tmp/from-user.pool", user))
        #expect(s["pool.key_capacity"]! == ("8192", user))
        #expect(s["queue.max_retries"]! == ("5", user))
        #expect(s["pool.size"]! == ("16777216", "default"))

        // The environment beats the file, a flag beats the environment.
        s = try Self.show([], environment: base.merging(["PMLL_POOL": "/tmp/from-env.pool"]) { $1 })
        #expect(s["pool.path"]! == ("/tmp/from-env.pool", "$PMLL_POOL"))
        s = try Self.show(["--pool", "/tmp/from-flag.pool"], environment: base.merging(["PMLL_POOL": "/tmp/from-env.pool"]) { $1 })
        #expect(s["pool.path"]! == ("/tmp/from-flag.pool", "--pool"))

        // --config (or $PMLL_CONFIG) replaces the system and user files.
        s = try Self.show(["--config", explicit], environment: base)
        #expect(s["pool.lock_capacity"]! == ("2048", explicit))
        #expect(s["pool.key_capacity"]! == ("4096", "default"))
        s = try Self.show([], environment: base.merging(["PMLL_CONFIG": explicit]) { $1 })
        #expect(s["pool.lock_capacity"]! == ("2048", explicit))
    }

    /// Each mistake: exit 78 and one line naming the file, the line and the key.
    @Test(arguments: [
        ("{\n  \"pool\": {\n    \"sise\": 5\n  }\n}\n", "line 3, key 'pool.sise': unknown setting"),
        ("{\n  \"pool\": {\n    \"size\": \"big\"\n  }\n}\n", "line 3, key 'pool.size': expected a whole number of bytes, found a string"),
        ("{\n  \"pool\": {\n    \"size\": 5,\n  }\n}\n", "line 4: expected a key in double quotes"),
        ("{\n  \"queue\": {\n    \"max_retries\": 2,\n    \"max_retries\": 3\n  }\n}\n", "line 4: key 'max_retries' is given twice"),
        ("{\n  \"queue\": {\n    \"max_retries\": -1\n  }\n}\n", "line 3, key 'queue.max_retries': -1 is outside 0...1000"),
        ("{\n  \"pools\": {}\n}\n", "line 2, key 'pools': unknown section"),
        ("{\n  \"backup\": 7\n}\n", "line 2, key 'backup': must be an object, not a number"),
        ("[1, 2]\n", "line 1: the document must be an object of sections"),
        ("{\n  \"pool\": {\n    \"size\": 1048576,\n    \"key_capacity\": 4000000\n  }\n}\n", "key 'pool': invalid pool options: size must be"),
        ("{\"pool\": {\"group_shared\": \"yes\"}}", "line 1, key 'pool.group_shared': expected true or false, found a string"),
    ])
    func aBadFileIsOneLineWithFileLineAndKey(text: String, expected: String) throws {
        let scratch = Scratch()
        let file = scratch.file("bad.json")
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        for command in [["config", "show"], ["status"], ["lock"]] {
            let r = try run(Binaries.pmll, command + ["--config", file, "--pool", scratch.file("p.pool")] + (command == ["lock"] ? ["x", "--", "true"] : []))
            #expect(r.status == 78, "\(command): \(r.status) \(r.stderr)")
            #expect(r.stderr.hasPrefix("pmll: configuration file '\(file)', \(expected)") || r.stderr.hasPrefix("pmll: configuration file '\(file)': \(expected)"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1)
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.file("p.pool")), "nothing created with a bad configuration")
        let missing = try run(Binaries.pmll, ["status", "--config", scratch.file("none.json")])
        #expect(missing.status == 78 && missing.stderr.contains("does not exist"))
        // pmll flock has no --config: $PMLL_CONFIG is read the same way.
        let flock = try run(Binaries.pmll, ["flock", scratch.file("lockfile"), "true"], environment: ["PMLL_CONFIG": file, "PMLL_POOL": scratch.file("p.pool")])
        #expect(flock.status == 78, "\(flock.stderr)")
    }

    /// `--group-shared` creates the pool 0660 (for a group of users to share); without it, 0600.
    @Test func groupSharedCreatesAGroupWritablePool() throws {
        let scratch = Scratch()
        let shared = scratch.file("shared.pool"), own = scratch.file("own.pool")
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", shared, "--group-shared", "k=v"]).status == 0)
        #expect(try run(Binaries.pmll, ["state", "set", "--pool", own, "k=v"]).status == 0)
        func mode(_ path: String) throws -> Int { (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1 }
        #expect(try mode(shared) == 0o660)
        #expect(try mode(own) == 0o600)
        let show = try Self.show(["--group-shared"], environment: ["PMLL_CONFIG": ""])
        #expect(show["pool.group_shared"]! == ("true", "--group-shared"))
    }

    /// Pool settings shape new pools; the queue timeout applies to `pmll queue exec`; the
    /// backup directory is where a bare `pmll backup` goes.
    @Test func settingsTakeEffect() throws {
        let scratch = Scratch()
        let pool = scratch.file("c.pool"), backups = scratch.file("backups")
        try FileManager.default.createDirectory(atPath: backups, withIntermediateDirectories: true)
        let config = scratch.file("c.json")
        try """
            {"pool": {"path": "\(pool)", "size": 33554432, "key_capacity": 20000, "lock_capacity": 300},
             "queue": {"timeout_ms": 300},
             "backup": {"directory": "\(backups)", "keep": 1}}
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let env = ["PMLL_CONFIG": config, "PMLL_POOL": ""]
        #expect(try run(Binaries.pmll, ["state", "set", "k=v"], environment: env).status == 0)
        let status = try run(Binaries.pmll, ["status", "--json"], environment: env)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(json["sizeBytes"] as? Int == 33554432)
        #expect(json["lockCapacity"] as? Int == 300)
        #expect((json["store"] as? [String: Any])?["keyCapacity"] as? Int == 20000)

        // A queue held by another process: exec gives up after the configured 300 ms.
        let holder = try Child.worker("queue-hold", "--pool", pool, "--queue", "jobs", "--state-file", scratch.file("state"))
        defer { holder.kill(); holder.wait() }
        #expect(holder.waitForEvent("running") != nil)
        let start = Date()
        let exec = try run(Binaries.pmll, ["queue", "exec", "jobs", "--", "true"], environment: env)
        #expect(exec.status == 75, "\(exec.stderr)")
        #expect(Date().timeIntervalSince(start) < 20)

        for _ in 0..<2 {
            #expect(try run(Binaries.pmll, ["backup"], environment: env).status == 0)
            usleep(1_050_000)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: backups).count == 1, "backup.keep 1")
        let noDirectory = try run(Binaries.pmll, ["backup", "--pool", pool], environment: ["PMLL_CONFIG": scratch.file("empty.json")].merging(["XDG_CONFIG_HOME": scratch.path]) { $1 })
        #expect(noDirectory.status == 78, "the named file does not exist: \(noDirectory.stderr)")
    }
}

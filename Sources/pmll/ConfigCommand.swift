import ArgumentParser
import PMLL

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Show the effective configuration.",
        subcommands: [ConfigShowCommand.self],
        defaultSubcommand: ConfigShowCommand.self
    )
}

struct ConfigShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Print every setting, its effective value and where it came from.",
        discussion: """
            Order, lowest first: defaults, /etc/pmll/config.json, then ~/.config/pmll/config.json \
            ($XDG_CONFIG_HOME) — or instead of both the file of --config or $PMLL_CONFIG —, then \
            $PMLL_POOL, then flags. A bad file: one pmll: line naming the file, line and key, exit 78. \
            Docs/Operations.md lists the settings.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Flag(help: "Print JSON instead of a table.") var json = false

    struct Row: Encodable {
        let key: String
        let value: String
        let source: String
    }

    func run() throws {
        let settings = try poolArguments.configuration().settings
        if json {
            try printJSON(settings.map { Row(key: $0.key, value: $0.value, source: $0.source.description) })
        } else {
            print(TableText.render([["SETTING", "VALUE", "FROM"]] + settings.map { [$0.key, $0.value, $0.source.description] }))
        }
    }
}

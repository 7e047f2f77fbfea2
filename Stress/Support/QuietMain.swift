public import ArgumentParser
import Logging

/// `main` for the stress tools: library logs at warning and above only (rollbacks and
/// takeovers are expected here), then the usual argument parsing.
public enum QuietMain {
    public static func run<Command: ParsableCommand>(_ command: Command.Type) async {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        do {
            var parsed = try command.parseAsRoot()
            if var asyncCommand = parsed as? any AsyncParsableCommand { try await asyncCommand.run() } else { try parsed.run() }
        } catch {
            command.exit(withError: error)
        }
    }
}

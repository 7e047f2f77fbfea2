public import ArgumentParser
import Foundation
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
            if let exit = error as? ExitCode { Foundation.exit(exit.rawValue) }
            let code = command.exitCode(for: error)
            if code == .success { command.exit(withError: error) }   // --help, --version
            // One line naming the tool, as the `pmll` command does; usage errors exit 64.
            let name = command.configuration.commandName ?? "pmll-tool"
            let message = command.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("\(name): \(message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message)\n".utf8))
            exit(code.rawValue)
        }
    }
}

package import Logging
import Synchronization

/// The library's loggers are made here, so that a program may put off its
/// `LoggingSystem.bootstrap` until the library first needs a logger: swift-log's first use
/// (its factory and the handler's metadata) was about 5 % of a `pmll lock` process, which on
/// its usual path logs nothing. A program that bootstraps at start, as most do, is unaffected.
package enum LibraryLogging {
    private static let pendingBootstrap = Mutex<(@Sendable () -> Void)?>(nil)

    /// Runs `bootstrap` (which must call `LoggingSystem.bootstrap`) before the library makes
    /// its first logger, if it ever does.
    package static func deferBootstrap(_ bootstrap: @escaping @Sendable () -> Void) {
        pendingBootstrap.withLock { $0 = bootstrap }
    }

    /// Runs a put-off bootstrap now, if one waits (before code that may log by other means).
    package static func bootstrapNow() {
        pendingBootstrap.withLock { pending in
            pending?()
            pending = nil
        }
    }

    package static func logger(label: String) -> Logger {
        bootstrapNow()   // under the lock: another thread's logger waits until it is done
        return Logger(label: label)
    }
}

import CPMLL
#if canImport(Glibc)
import Glibc
#endif

/// Child processes of the stress tools never outlive the tool that started them: the
/// parent passes its pid in `PMLL_PARENT_PID`, and the child arms a watch on it first thing.
public enum ParentWatch {
    public static let variable = "PMLL_PARENT_PID"

    /// The environment entry a parent adds for its children.
    public static var entryForChildren: (String, String) { (variable, "\(getpid())") }

    /// In a child: SIGKILL this process when the parent named in the environment exits.
    public static func armFromEnvironment() {
        guard let raw = getenv(variable), let parent = Int32(String(cString: raw)), parent > 1 else { return }
        _ = pmll_die_with_parent(parent)
    }
}

import CPMLL
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore
import SystemPackage

extension LockHandle {
    /// Prepares a held lock to be kept by the program this process is about to `exec`
    /// (`pmll flock --no-fork`): the pool descriptor, whose OFD lock on our process slot is
    /// the kernel's proof that we live, stays open across exec, and an exclusive hold is
    /// marked so that the exec'd program's exit counts as the release it will never make,
    /// not as an owner death. A shared hold needs no mark: a writer discounts it when the
    /// process is gone (counted with the reader deaths).
    public func keepAcrossExec() throws(PMLLError) {
        let fd = pool.fd.rawValue
        let flags = fcntl(fd, F_GETFD)
        guard flags >= 0, fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) == 0 else {
            throw .systemCall(name: "fcntl(F_SETFD)", errno: Errno(rawValue: errno))
        }
        let word = pmll_entry_word(entry)
        if pmll_load32(word) & PMLL_OWNER_MASK == pool.token.rawValue {
            _ = pmll_or32(word, PMLL_WORD_EXIT_RELEASES)
        }
    }
}

package io.mqvirtio.linux;

/**
 * A Linux call failed: carries the call's name and the errno it returned.
 * The one error type of the {@code linux} layer.
 */
public final class ErrnoException extends RuntimeException {
    public static final int EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, EBADF = 9, EAGAIN = 11, ENOMEM = 12,
            EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19, EINVAL = 22, ENFILE = 23, EMFILE = 24,
            ENOSPC = 28, EPIPE = 32, ENOSYS = 38, ENOTSOCK = 88, EMSGSIZE = 90, EADDRINUSE = 98, ECONNRESET = 104,
            ENOTCONN = 107, ENOBUFS = 105, ECONNREFUSED = 111, ECANCELED = 125;

    private final String call;
    private final int errno;

    public ErrnoException(String call, int errno) {
        super(call + ": " + Native.strerror(errno) + " (errno " + errno + ")");
        this.call = call;
        this.errno = errno;
    }

    /** The call that failed, with the detail that tells it apart, e.g. {@code ioctl(TUNSETIFF)}. */
    public String call() {
        return call;
    }

    public int errno() {
        return errno;
    }
}

package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_LONG;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;

/**
 * An AF_UNIX stream socket with descriptor passing (SCM_RIGHTS): the vhost-user control channel. Blocking unless
 * {@link #setNonBlocking} says otherwise; every descriptor it creates or receives is close-on-exec.
 *
 * <p>Sending and receiving allocate a little scratch memory per call: this is the control path, never the data path.
 */
public final class UnixSocket extends Fd {
    private static final MethodHandle SOCKET =
            Native.downcall("socket", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT));
    private static final MethodHandle SOCKETPAIR =
            Native.downcall("socketpair", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT, C_POINTER));
    private static final MethodHandle BIND =
            Native.downcall("bind", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle LISTEN =
            Native.downcall("listen", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle CONNECT =
            Native.downcall("connect", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle ACCEPT4 =
            Native.downcall("accept4", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_POINTER, C_INT));
    private static final MethodHandle SENDMSG =
            Native.downcall("sendmsg", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle RECVMSG =
            Native.downcall("recvmsg", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle GETSOCKOPT = Native.downcall("getsockopt",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT, C_POINTER, C_POINTER));
    private static final MethodHandle SHUTDOWN =
            Native.downcall("shutdown", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));
    private static final MethodHandle SETSOCKOPT = Native.downcall("setsockopt",
            FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT, C_POINTER, C_INT));
    private static final int SO_SNDTIMEO = 21;
    private static final MethodHandle FCHMOD =
            Native.downcall("fchmod", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT));

    // <sys/socket.h>, <bits/socket.h>, socket(7), unix(7)
    private static final int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000, SOL_SOCKET = 1,
            SO_PEERCRED = 17, SCM_RIGHTS = 1, SHUT_RDWR = 2, SO_TYPE = 3, SO_ACCEPTCONN = 30, SO_DOMAIN = 39;
    private static final int MSG_CTRUNC = 0x8, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;

    /** sockaddr_un (unix(7)): sa_family_t sun_family (u16), then char sun_path[108]. */
    private static final int SUN_PATH_OFFSET = 2, SUN_PATH_SIZE = 108, SOCKADDR_UN_SIZE = 110;

    /*
     * struct msghdr (sendmsg(2), <bits/socket.h>) on x86_64, 56 bytes: void *msg_name @0, socklen_t msg_namelen
     * @8 (+4 pad), struct iovec *msg_iov @16, size_t msg_iovlen @24, void *msg_control @32, size_t msg_controllen
     * @40, int msg_flags @48 (+4 pad). struct iovec (readv(2)) is {void *base; size_t len}, 16 bytes.
     */
    private static final long MSGHDR_SIZE = 56, MSG_IOV = 16, MSG_IOVLEN = 24, MSG_CONTROL = 32,
            MSG_CONTROLLEN = 40, MSG_FLAGS = 48, IOVEC_SIZE = 16;

    /*
     * struct cmsghdr (cmsg(3)): size_t cmsg_len @0, int cmsg_level @8, int cmsg_type @12, data @16.
     * CMSG_LEN(n) = 16 + n; CMSG_SPACE(n) = 16 + n rounded up to 8 (alignment of size_t).
     */
    private static final long CMSG_HDR = 16, CMSG_LEVEL = 8, CMSG_TYPE = 12;

    /**
     * What one {@link #recv} got: {@code bytes} read (0 at end of stream, -1 if it would block) and the fds.
     * {@code fdsDropped}: the peer sent descriptors with these bytes that this process could not take (it had no
     * descriptor free, EMFILE or ENFILE: the kernel drops them and says MSG_CTRUNC); {@code fds} is then empty, the
     * ones that did arrive closed, and the bytes are there as sent.
     */
    public record Received(long bytes, int[] fds, boolean fdsDropped) {
        public Received(long bytes, int[] fds) {
            this(bytes, fds, false);
        }
    }

    /** The peer's identity at connect time (SO_PEERCRED, socket(7)). */
    public record Credentials(int pid, int uid, int gid) {}

    /** Two connected sockets ({@code socketpair(2)}); closing the pair closes both. */
    public record Pair(UnixSocket first, UnixSocket second) implements AutoCloseable {
        @Override
        public void close() {
            try {
                first.close();
            } finally {
                second.close();
            }
        }
    }

    private UnixSocket(int fd) {
        super(fd);
    }

    /** Wraps a socket received from elsewhere. */
    public static UnixSocket adopt(int fd) {
        return new UnixSocket(fd);
    }

    /**
     * Takes an inherited listening socket: descriptor {@code fd} as a supervisor passes it (vhost-user's {@code --fd},
     * systemd's socket activation). It must be an AF_UNIX stream socket that listens; anything else (not open, not a
     * socket, another family or type, not listening) is an {@link IllegalArgumentException} saying which, and the
     * descriptor is left as it was. Adopted, it is close-on-exec.
     */
    public static UnixSocket adoptListening(int fd) {
        if (fd < 0) {
            throw new IllegalArgumentException("fd " + fd + " is not a descriptor");
        }
        int domain;
        int type;
        int listening;
        try {
            domain = socketOption(fd, SO_DOMAIN);
            type = socketOption(fd, SO_TYPE);
            listening = socketOption(fd, SO_ACCEPTCONN);
        } catch (ErrnoException e) {
            throw new IllegalArgumentException(switch (e.errno()) {
                case ErrnoException.EBADF -> "fd " + fd + " is not open";
                case ErrnoException.ENOTSOCK -> "fd " + fd + " is not a socket";
                default -> "fd " + fd + ": " + e.getMessage();
            }, e);
        }
        if (domain != AF_UNIX || type != SOCK_STREAM) {
            throw new IllegalArgumentException("fd " + fd + " is not an AF_UNIX stream socket (family " + domain
                    + ", type " + type + ")");
        }
        if (listening != 1) {
            throw new IllegalArgumentException("fd " + fd + " is a socket that does not listen");
        }
        UnixSocket s = new UnixSocket(fd);
        s.fcntl(F_SETFD, FD_CLOEXEC, "fcntl(F_SETFD)");
        return s;
    }

    private static int socketOption(int fd, int option) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment v = a.allocate(C_INT);
            MemorySegment len = a.allocate(C_INT);
            len.set(C_INT, 0, 4);
            Native.check((int) GETSOCKOPT.invokeExact(Native.errnoState(), fd, SOL_SOCKET, option, v, len),
                    "getsockopt");
            return v.get(C_INT, 0);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * A listening socket bound to {@code path}. An existing file at {@code path} fails with EADDRINUSE: this never
     * removes it, since it may be a live server's socket (deciding that is a separate question).
     */
    public static UnixSocket listen(Path path, int backlog) {
        return listen(path, backlog, -1);
    }

    /**
     * A listening socket bound to {@code path} whose file has at most the permission bits {@code mode} (less the
     * umask) from the moment bind(2) makes it: Linux gives the file the mode of the socket's own inode, which
     * fchmod(2) on the unbound socket sets. A chmod after bind leaves a window in which the file has the umask's mode
     * (0777 under umask 0): whoever may connect then has a connection in the backlog that is accepted later.
     * {@code mode} -1: as the umask has it.
     */
    public static UnixSocket listen(Path path, int backlog, int mode) {
        UnixSocket s = open();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = sockaddr(a, path);
            if (mode >= 0) {
                Native.check((int) FCHMOD.invokeExact(Native.errnoState(), s.fd(), mode), "fchmod");
            }
            Native.check((int) BIND.invokeExact(Native.errnoState(), s.fd(), addr, (int) addr.byteSize()), "bind");
            Native.check((int) LISTEN.invokeExact(Native.errnoState(), s.fd(), backlog), "listen");
            return s;
        } catch (Throwable t) {
            s.close();
            throw Native.rethrow(t);
        }
    }

    /** A socket connected to the server listening on {@code path}. */
    public static UnixSocket connect(Path path) {
        UnixSocket s = open();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = sockaddr(a, path);
            int r;
            // An AF_UNIX connect interrupted by a signal has connected nothing yet (the wait is for backlog room),
            // so retrying is safe here, unlike for TCP.
            do {
                r = (int) CONNECT.invokeExact(Native.errnoState(), s.fd(), addr, (int) addr.byteSize());
            } while (r < 0 && Native.lastErrno() == ErrnoException.EINTR);
            Native.check(r, "connect");
            return s;
        } catch (Throwable t) {
            s.close();
            throw Native.rethrow(t);
        }
    }

    /**
     * A socket connected to the server listening on {@code path}, within {@code timeoutMillis}: a listener whose
     * backlog is full (it does not accept) would keep a blocking connect waiting for good, so the socket connects
     * non-blocking, and an AF_UNIX connect that finds no room fails at once with EAGAIN: it is tried again until
     * the deadline, then fails with EAGAIN. The socket is blocking again once connected.
     */
    public static UnixSocket connect(Path path, long timeoutMillis) {
        UnixSocket s = open();
        try (Arena a = Arena.ofConfined()) {
            s.setNonBlocking(true);
            MemorySegment addr = sockaddr(a, path);
            // saturating: timeoutMillis * 10^6 overflows from about 292 years on (Long.MAX_VALUE: -10^6, already past)
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(Math.max(0, timeoutMillis));
            long pause = 1;
            while (true) {
                int r = (int) CONNECT.invokeExact(Native.errnoState(), s.fd(), addr, (int) addr.byteSize());
                if (r == 0) {
                    break;
                }
                int e = Native.lastErrno();
                if (e != ErrnoException.EAGAIN && e != ErrnoException.EINTR) {
                    throw new ErrnoException("connect", e);
                }
                if (System.nanoTime() - deadline > 0) {
                    throw new ErrnoException("connect: the listener accepted nothing within " + timeoutMillis + " ms",
                            ErrnoException.EAGAIN);
                }
                Thread.sleep(pause);
                pause = Math.min(2 * pause, 50);
            }
            s.setNonBlocking(false);
            return s;
        } catch (Throwable t) {
            s.close();
            if (t instanceof InterruptedException) {
                Thread.currentThread().interrupt();
                throw new ErrnoException("connect: interrupted", ErrnoException.EINTR);
            }
            throw Native.rethrow(t);
        }
    }

    /** Two connected sockets, e.g. to hand one end to a child or to test without a path. */
    public static Pair pair() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment fds = a.allocate(ValueLayout.JAVA_INT, 2);
            Native.check((int) SOCKETPAIR.invokeExact(Native.errnoState(), AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds),
                    "socketpair");
            return new Pair(new UnixSocket(fds.getAtIndex(ValueLayout.JAVA_INT, 0)),
                    new UnixSocket(fds.getAtIndex(ValueLayout.JAVA_INT, 1)));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    private static UnixSocket open() {
        try {
            return new UnixSocket(Native.check(
                    (int) SOCKET.invokeExact(Native.errnoState(), AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** sockaddr_un for a filesystem path; its length is through the path's terminating NUL. */
    private static MemorySegment sockaddr(Arena a, Path path) {
        byte[] p = path.toString().getBytes(StandardCharsets.UTF_8);
        if (p.length == 0 || p.length > SUN_PATH_SIZE - 1) {
            throw new IllegalArgumentException("AF_UNIX socket path must be 1.." + (SUN_PATH_SIZE - 1)
                    + " bytes, is " + p.length + ": " + path);
        }
        for (byte b : p) {
            if (b == 0) {
                throw new IllegalArgumentException("AF_UNIX socket path contains a NUL byte: " + path);
            }
        }
        MemorySegment addr = a.allocate(SOCKADDR_UN_SIZE, 2); // zero-filled: the NUL terminator is already there
        addr.set(ValueLayout.JAVA_SHORT, 0, (short) AF_UNIX);
        MemorySegment.copy(p, 0, addr, ValueLayout.JAVA_BYTE, SUN_PATH_OFFSET, p.length);
        return addr.asSlice(0, SUN_PATH_OFFSET + p.length + 1);
    }

    /** The next connection; null if the socket is non-blocking and none is pending. */
    public UnixSocket accept() {
        try {
            int r;
            do {
                r = (int) ACCEPT4.invokeExact(Native.errnoState(), fd(), MemorySegment.NULL, MemorySegment.NULL,
                        SOCK_CLOEXEC);
            } while (r < 0 && Native.lastErrno() == ErrnoException.EINTR);
            return Fd.again(r, "accept4") < 0 ? null : new UnixSocket(r);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Sends all of {@code data}, with {@code fds} (may be empty) riding on its first byte as SCM_RIGHTS. A closed
     * peer gives EPIPE as an exception, never SIGPIPE (MSG_NOSIGNAL). On a non-blocking socket a full buffer
     * throws EAGAIN: the control channel is blocking. Returns the byte count sent.
     */
    public long send(MemorySegment data, int... fds) {
        if (fds.length > 0 && data.byteSize() == 0) {
            throw new IllegalArgumentException("descriptors need at least one byte of data to ride on");
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment src = data.isNative() ? data : a.allocate(data.byteSize()).copyFrom(data);
            MemorySegment msg = a.allocate(MSGHDR_SIZE, 8);
            MemorySegment iov = a.allocate(IOVEC_SIZE, 8);
            msg.set(C_POINTER, MSG_IOV, iov);
            msg.set(C_LONG, MSG_IOVLEN, 1);
            if (fds.length > 0) {
                long payload = 4L * fds.length;
                MemorySegment cmsg = a.allocate(cmsgSpace(payload), 8);
                cmsg.set(C_LONG, 0, CMSG_HDR + payload);
                cmsg.set(C_INT, CMSG_LEVEL, SOL_SOCKET);
                cmsg.set(C_INT, CMSG_TYPE, SCM_RIGHTS);
                MemorySegment.copy(fds, 0, cmsg, C_INT, CMSG_HDR, fds.length);
                msg.set(C_POINTER, MSG_CONTROL, cmsg);
                msg.set(C_LONG, MSG_CONTROLLEN, cmsg.byteSize());
            }
            long sent = 0;
            do { // once even for empty data, so an empty send is still a (no-op) call that checks the socket
                iov.set(C_POINTER, 0, src.asSlice(sent));
                iov.set(C_LONG, 8, src.byteSize() - sent);
                long n = (long) SENDMSG.invokeExact(Native.errnoState(), fd(), msg, MSG_NOSIGNAL);
                if (n < 0) {
                    if (Native.lastErrno() == ErrnoException.EINTR) {
                        continue; // nothing was sent, descriptors included: send them again
                    }
                    throw new ErrnoException("sendmsg", Native.lastErrno());
                }
                sent += n;
                // The descriptors went with the first chunk; the peer must not receive them twice.
                msg.set(C_POINTER, MSG_CONTROL, MemorySegment.NULL);
                msg.set(C_LONG, MSG_CONTROLLEN, 0);
            } while (sent < src.byteSize());
            return sent;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * One {@code recvmsg} into {@code buf}, accepting up to {@code maxFds} descriptors (close-on-exec, owned by the
     * caller). Bytes 0 means end of stream; -1 means non-blocking and nothing ready. If the peer sent more
     * descriptors than {@code maxFds} (MSG_CTRUNC with the room for them full), the ones that arrived are closed and
     * this throws EMSGSIZE: a peer that does so is broken, and a half-received set of descriptors is of no use. If
     * the kernel dropped descriptors with room left for them (MSG_CTRUNC: it could not install them, this process
     * being out of descriptors), the ones that arrived are closed too, and the bytes are returned with {@link
     * Received#fdsDropped}: the stream is intact, and the caller says what the message lost.
     */
    public Received recv(MemorySegment buf, int maxFds) {
        if (maxFds < 0) {
            throw new IllegalArgumentException("maxFds must not be negative: " + maxFds);
        }
        try (Arena a = Arena.ofConfined()) {
            MemorySegment dst = buf.isNative() ? buf : a.allocate(Math.max(1, buf.byteSize()));
            MemorySegment msg = a.allocate(MSGHDR_SIZE, 8);
            MemorySegment iov = a.allocate(IOVEC_SIZE, 8);
            iov.set(C_POINTER, 0, dst);
            iov.set(C_LONG, 8, buf.byteSize());
            msg.set(C_POINTER, MSG_IOV, iov);
            msg.set(C_LONG, MSG_IOVLEN, 1);
            MemorySegment control = maxFds == 0 ? MemorySegment.NULL : a.allocate(cmsgSpace(4L * maxFds), 8);
            long n;
            do {
                msg.set(C_POINTER, MSG_CONTROL, control);
                msg.set(C_LONG, MSG_CONTROLLEN, control.byteSize());
                msg.set(C_INT, MSG_FLAGS, 0);
                n = (long) RECVMSG.invokeExact(Native.errnoState(), fd(), msg, MSG_CMSG_CLOEXEC);
            } while (n < 0 && Native.lastErrno() == ErrnoException.EINTR);
            if (Fd.again(n, "recvmsg") < 0) {
                return new Received(-1, new int[0]);
            }
            int[] fds = maxFds == 0 ? new int[0] : parseRights(control, msg.get(C_LONG, MSG_CONTROLLEN));
            // The control buffer is rounded up to 8 bytes, so it may hold one descriptor more than asked for (found
            // by fuzzing: 8 arrived where 7 were allowed): more than maxFds is refused as a truncation is.
            boolean truncated = (msg.get(C_INT, MSG_FLAGS) & MSG_CTRUNC) != 0;
            if (truncated || fds.length > maxFds) {
                for (int fd : fds) {
                    new Fd(fd).close();
                }
                if (!truncated || fds.length >= maxFds) {
                    throw new ErrnoException("recvmsg: peer sent more than " + maxFds + " fds (MSG_CTRUNC)",
                            ErrnoException.EMSGSIZE);
                }
                // Room was left, yet the kernel cut the list: it could not install a descriptor (scm_detach_fds stops
                // at the first that fails, EMFILE: this process is at its limit) and dropped it and the rest.
                fds = new int[0];
            }
            if (dst != buf) {
                MemorySegment.copy(dst, 0, buf, 0, n);
            }
            return new Received(n, fds, truncated);
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** The descriptors of every SCM_RIGHTS message in the first {@code length} bytes of {@code control}. */
    private static int[] parseRights(MemorySegment control, long length) {
        int[] fds = new int[0];
        long off = 0;
        while (off + CMSG_HDR <= length) {
            long len = control.get(C_LONG, off);
            if (len < CMSG_HDR || off + len > length) {
                break; // malformed or truncated: the kernel never produces this, but never read past it
            }
            if (control.get(C_INT, off + CMSG_LEVEL) == SOL_SOCKET
                    && control.get(C_INT, off + CMSG_TYPE) == SCM_RIGHTS) {
                int n = (int) ((len - CMSG_HDR) / 4);
                int at = fds.length;
                fds = Arrays.copyOf(fds, at + n);
                MemorySegment.copy(control, C_INT, off + CMSG_HDR, fds, at, n);
            }
            off += cmsgSpace(len - CMSG_HDR);
        }
        return fds;
    }

    private static long cmsgSpace(long payload) {
        return CMSG_HDR + ((payload + 7) & ~7L);
    }

    /** Who is on the other end: their pid, uid and gid when they connected (or created the pair). */
    public Credentials peerCredentials() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment cred = a.allocate(12, 4); // struct ucred {pid_t pid; uid_t uid; gid_t gid;}
            MemorySegment len = a.allocate(C_INT);
            len.set(C_INT, 0, 12);
            Native.check((int) GETSOCKOPT.invokeExact(Native.errnoState(), fd(), SOL_SOCKET, SO_PEERCRED, cred, len),
                    "getsockopt(SO_PEERCRED)");
            return new Credentials(cred.get(C_INT, 0), cred.get(C_INT, 4), cred.get(C_INT, 8));
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * Bounds how long one {@link #send} may wait for room in the peer's receive queue (SO_SNDTIMEO): past it, the send
     * fails with EAGAIN, so a peer that stops reading cannot hold the sender for good.
     */
    public void setSendTimeout(long millis) {
        setSendTimeout(fd(), millis);
    }

    /** SO_SNDTIMEO on any socket descriptor {@code fd} (a datagram one too: {@link SdNotify}). */
    static void setSendTimeout(int fd, long millis) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment tv = a.allocate(16, 8); // struct timeval {time_t tv_sec; suseconds_t tv_usec;}
            tv.set(C_LONG, 0, millis / 1000);
            tv.set(C_LONG, 8, (millis % 1000) * 1000);
            Native.check((int) SETSOCKOPT.invokeExact(Native.errnoState(), fd, SOL_SOCKET, SO_SNDTIMEO, tv, 16),
                    "setsockopt(SO_SNDTIMEO)");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** Whether the peer has closed or shut down its end (poll's POLLRDHUP/POLLHUP, nothing consumed). */
    public boolean peerHungUp() {
        return (poll(POLLRDHUP, 0) & (POLLRDHUP | POLLHUP)) != 0;
    }

    /** Shuts both directions: the peer reads end of stream, and a thread blocked in {@link #recv} here wakes. */
    public void shutdown() {
        try {
            Native.check((int) SHUTDOWN.invokeExact(Native.errnoState(), fd(), SHUT_RDWR), "shutdown");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}

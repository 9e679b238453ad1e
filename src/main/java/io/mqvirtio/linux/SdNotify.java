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

/**
 * systemd's readiness protocol (sd_notify(3)): a datagram of {@code KEY=VALUE} lines to the AF_UNIX socket named by
 * {@code NOTIFY_SOCKET} (a path, or an abstract name written {@code @name}). Nothing happens without that variable,
 * so a daemon can always call it; a socket that is gone or refuses is reported, never fatal. Also a receiving end
 * ({@link Listener}), for tests and for supervisors of our own.
 */
public final class SdNotify {
    private static final int AF_UNIX = 1, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0x80000, MSG_NOSIGNAL = 0x4000;
    private static final int SUN_PATH_SIZE = 108;
    /**
     * The longest a notification waits for the receiver: systemd reads its socket at once, even when busy well
     * within this, and a receiver that has not read for this long is not going to.
     */
    static final long SEND_TIMEOUT_MS = 5000;

    private static final MethodHandle SOCKET =
            Native.downcall("socket", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT));
    private static final MethodHandle SENDTO = Native.downcall("sendto",
            FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_LONG, C_INT, C_POINTER, C_INT));
    private static final MethodHandle BIND =
            Native.downcall("bind", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle RECV =
            Native.downcall("recv", FunctionDescriptor.of(C_LONG, C_POINTER, C_INT, C_POINTER, C_LONG, C_INT));

    /**
     * The socket notifications go out through, made by the first and kept for the process's life: STOPPING comes
     * when the process may be out of file descriptors (socket(2) failed with EMFILE, and systemd was never told),
     * and a datagram socket that is neither bound nor connected can send to any receiver.
     */
    private static Fd socket;

    private SdNotify() {}

    /**
     * Sends {@code state} (e.g. "READY=1\nSTATUS=...") to {@code NOTIFY_SOCKET}; returns false when there is no such
     * variable (nobody asked to be told).
     *
     * @throws ErrnoException when the socket named cannot take it
     */
    public static boolean notify(String state) {
        String target = System.getenv("NOTIFY_SOCKET");
        if (target == null || target.isEmpty()) {
            return false;
        }
        send(target, state);
        return true;
    }

    /** Sends {@code state} as one datagram to the notification socket {@code target} (a path or {@code @abstract}). */
    public static void send(String target, String state) {
        send(target, state, SEND_TIMEOUT_MS);
    }

    /**
     * As {@link #send(String, String)}, waiting at most {@code timeoutMillis} for room in the receiver's queue. A
     * datagram to a socket whose queue is full (net.unix.max_dgram_qlen, 10 or 512) waits until the receiver reads;
     * one that never does (NOTIFY_SOCKET left over from another service, pointing at a socket nobody reads) held
     * serve's main thread in sendto for good: before READY, so it never served its stop signal, or at STOPPING, so
     * SIGTERM never finished. Past the bound the send fails with EAGAIN (a warning, as any failure to notify).
     */
    static synchronized void send(String target, String state, long timeoutMillis) {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment addr = address(a, target);
            if (socket == null) {
                socket = new Fd(Native.check((int) SOCKET.invokeExact(Native.errnoState(), AF_UNIX,
                        SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket(AF_UNIX, SOCK_DGRAM)"));
            }
            UnixSocket.setSendTimeout(socket.fd(), timeoutMillis);
            byte[] b = state.getBytes(StandardCharsets.UTF_8);
            MemorySegment msg = a.allocate(Math.max(1, b.length));
            MemorySegment.copy(b, 0, msg, ValueLayout.JAVA_BYTE, 0, b.length);
            long r;
            do {
                r = (long) SENDTO.invokeExact(Native.errnoState(), socket.fd(), msg, (long) b.length, MSG_NOSIGNAL,
                        addr, (int) addr.byteSize());
            } while (r < 0 && Native.lastErrno() == ErrnoException.EINTR);
            Native.check(r, "sendto(NOTIFY_SOCKET " + target + ")");
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /** sockaddr_un for a path, or for an abstract name given as "@name" (no terminating NUL counted). */
    private static MemorySegment address(Arena a, String target) {
        boolean abstractName = target.startsWith("@");
        byte[] p = (abstractName ? target.substring(1) : target).getBytes(StandardCharsets.UTF_8);
        if (p.length == 0 || p.length > SUN_PATH_SIZE - 1) {
            throw new IllegalArgumentException("NOTIFY_SOCKET must name 1.." + (SUN_PATH_SIZE - 1) + " bytes: " + target);
        }
        MemorySegment addr = a.allocate(2 + SUN_PATH_SIZE, 2);
        addr.set(ValueLayout.JAVA_SHORT, 0, (short) AF_UNIX);
        MemorySegment.copy(p, 0, addr, ValueLayout.JAVA_BYTE, abstractName ? 3 : 2, p.length);
        return addr.asSlice(0, abstractName ? 3 + p.length : 2 + p.length + 1);
    }

    /** A bound datagram socket that receives notifications, as a supervisor does. */
    public static final class Listener implements AutoCloseable {
        private final Fd fd;

        private Listener(Fd fd) {
            this.fd = fd;
        }

        /** Listens at {@code target} (a path, which must not exist, or {@code @abstract}). */
        public static Listener bind(String target) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment addr = address(a, target);
                int s = Native.check((int) SOCKET.invokeExact(Native.errnoState(), AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0),
                        "socket(AF_UNIX, SOCK_DGRAM)");
                Fd fd = new Fd(s);
                try {
                    Native.check((int) BIND.invokeExact(Native.errnoState(), s, addr, (int) addr.byteSize()),
                            "bind(" + target + ")");
                } catch (Throwable t) {
                    fd.close();
                    throw t;
                }
                return new Listener(fd);
            } catch (Throwable t) {
                throw Native.rethrow(t);
            }
        }

        /** The next notification within {@code timeoutMillis}, or null. */
        public String receive(int timeoutMillis) {
            if (fd.poll(Fd.POLLIN, timeoutMillis) == 0) {
                return null;
            }
            try (Arena a = Arena.ofConfined()) {
                MemorySegment buf = a.allocate(4096);
                long n = Native.check((long) RECV.invokeExact(Native.errnoState(), fd.fd(), buf, 4096L, 0), "recv");
                return new String(buf.asSlice(0, n).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
            } catch (Throwable t) {
                throw Native.rethrow(t);
            }
        }

        @Override
        public void close() {
            fd.close();
        }
    }
}

package io.mqvirtio.linux;

import static io.mqvirtio.linux.Native.C_INT;
import static io.mqvirtio.linux.Native.C_POINTER;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * A raw packet socket (AF_PACKET, SOCK_RAW) bound to one interface, for sending whole Ethernet frames onto it in
 * batches with {@code sendmmsg}: what a host-side sender does to a TAP device (the frames go to the TAP's queues,
 * spread by the kernel's own queue selection, and come out of their fds). Opened in the calling thread's network
 * namespace; the descriptor then works from any thread.
 */
public final class PacketSocket extends Fd {
    private static final int AF_PACKET = 17, SOCK_RAW = 3, SOCK_CLOEXEC = 0x80000;
    private static final short ETH_P_ALL_BE = 0x0300; // htons(ETH_P_ALL = 3)
    private static final long SOCKADDR_LL = 20;
    /** struct msghdr (56 bytes on x86-64) and the msg_len after it, padded: struct mmsghdr. */
    private static final long MMSGHDR = 64, MSG_IOV = 16, MSG_IOVLEN = 24, IOVEC = 16;

    private static final MethodHandle SOCKET =
            Native.downcall("socket", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_INT, C_INT));
    private static final MethodHandle BIND =
            Native.downcall("bind", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT));
    private static final MethodHandle IF_NAMETOINDEX =
            Native.downcall("if_nametoindex", FunctionDescriptor.of(C_INT, C_POINTER, C_POINTER));
    private static final MethodHandle SENDMMSG =
            Native.downcall("sendmmsg", FunctionDescriptor.of(C_INT, C_POINTER, C_INT, C_POINTER, C_INT, C_INT));

    private PacketSocket(int fd) {
        super(fd);
    }

    /** A packet socket bound to {@code ifName} in the calling thread's namespace (needs CAP_NET_RAW). */
    public static PacketSocket open(String ifName) {
        try (Arena a = Arena.ofConfined()) {
            int index = (int) IF_NAMETOINDEX.invokeExact(Native.errnoState(), a.allocateFrom(ifName));
            if (index == 0) {
                throw new ErrnoException("if_nametoindex(" + ifName + ")", Native.lastErrno());
            }
            int fd = Native.check((int) SOCKET.invokeExact(Native.errnoState(), AF_PACKET, SOCK_RAW | SOCK_CLOEXEC,
                    (int) ETH_P_ALL_BE), "socket(AF_PACKET)");
            PacketSocket s = new PacketSocket(fd);
            try {
                MemorySegment sll = a.allocate(SOCKADDR_LL, 4);
                sll.set(ValueLayout.JAVA_SHORT, 0, (short) AF_PACKET);
                sll.set(ValueLayout.JAVA_SHORT, 2, ETH_P_ALL_BE);
                sll.set(ValueLayout.JAVA_INT, 4, index);
                Native.check((int) BIND.invokeExact(Native.errnoState(), fd, sll, (int) SOCKADDR_LL),
                        "bind(AF_PACKET, " + ifName + ")");
            } catch (Throwable t) {
                s.close();
                throw t;
            }
            return s;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }

    /**
     * A batch of frames to send with one system call: {@code capacity} messages of one buffer each, laid out once
     * in {@code arena}; {@link #set} names each frame, {@link #send} sends the first {@code n}.
     */
    public static final class Batch {
        private final MemorySegment msgs;
        private final MemorySegment iovs;
        private final int capacity;

        public Batch(Arena arena, int capacity) {
            if (capacity < 1 || capacity > 1024) {
                throw new IllegalArgumentException("a batch of 1..1024 frames, not " + capacity);
            }
            this.capacity = capacity;
            this.msgs = arena.allocate(MMSGHDR * capacity, 8);
            this.iovs = arena.allocate(IOVEC * capacity, 8);
            for (int i = 0; i < capacity; i++) {
                msgs.set(ValueLayout.ADDRESS, MMSGHDR * i + MSG_IOV, iovs.asSlice(IOVEC * i, IOVEC));
                msgs.set(ValueLayout.JAVA_LONG, MMSGHDR * i + MSG_IOVLEN, 1);
            }
        }

        public int capacity() {
            return capacity;
        }

        /** Message {@code i} sends {@code frame} (a native segment that outlives the batch's use). */
        public void set(int i, MemorySegment frame) {
            if (!frame.isNative()) {
                throw new IllegalArgumentException("frames must be native memory");
            }
            iovs.set(ValueLayout.JAVA_LONG, IOVEC * i, frame.address());
            iovs.set(ValueLayout.JAVA_LONG, IOVEC * i + 8, frame.byteSize());
        }
    }

    /**
     * Sends the first {@code n} frames of {@code batch}; returns how many the kernel took (a frame the interface
     * drops, as a TAP with a full queue does, still counts as sent), or -1 if none could go now (EAGAIN, ENOBUFS).
     */
    public int send(Batch batch, int n) {
        if (n < 1 || n > batch.capacity) {
            throw new IllegalArgumentException("cannot send " + n + " of a batch of " + batch.capacity);
        }
        try {
            int r;
            do {
                r = (int) SENDMMSG.invokeExact(Native.errnoState(), fd(), batch.msgs, n, 0);
            } while (r < 0 && Native.lastErrno() == ErrnoException.EINTR);
            if (r < 0) {
                int e = Native.lastErrno();
                if (e == ErrnoException.EAGAIN || e == ErrnoException.ENOBUFS) {
                    return -1;
                }
                throw new ErrnoException("sendmmsg(AF_PACKET)", e);
            }
            return r;
        } catch (Throwable t) {
            throw Native.rethrow(t);
        }
    }
}

package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.ALL_PF;
import static io.mqvirtio.vhostuser.BackendHarness.BASIC_PF;
import static io.mqvirtio.vhostuser.BackendHarness.RING;
import static io.mqvirtio.vhostuser.RawPeer.V1;
import static io.mqvirtio.vhostuser.RawPeer.NEED_REPLY;
import static io.mqvirtio.vhostuser.RawPeer.REPLY;
import static io.mqvirtio.vhostuser.RawPeer.frame;
import static io.mqvirtio.vhostuser.RawPeer.memReg;
import static io.mqvirtio.vhostuser.RawPeer.memTable;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static io.mqvirtio.vhostuser.RawPeer.vringAddr;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.virtio.SplitRing;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Named;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * A hostile or broken frontend, one malformed message per case, over a real UNIX socket with real memfds and
 * eventfds. Every case must end in a clear error, logged: a REPLY_ACK failure (u64 non-zero) when the frontend asked
 * for an ack and negotiated REPLY_ACK, after which the same connection still works; or the connection closed.
 * Then a new frontend on the same socket is fully served, and the process holds exactly the descriptors and memfd
 * mappings it held before the case.
 */
@Timeout(30)
class HostileFrontendTest {
    /** How far the session is set up before the bad message. */
    enum Setup {
        /** Connected, nothing sent. */
        NONE,
        /** Features and protocol features negotiated (REPLY_ACK among them unless the case says otherwise). */
        NEGOTIATED,
        /** And a memory table. */
        MEMORY,
        /** And ring 0 running, enabled. */
        RING
    }

    enum Outcome {
        /** A REPLY_ACK with a non-zero u64; the connection stays usable. */
        ACK_FAILURE,
        /** The backend closes the connection without replying. */
        CLOSED,
        /** The frontend hung up in the middle of a message; the backend must notice and end the session. */
        HANGUP
    }

    /** What a case's bad message may use. */
    static final class Ctx {
        final RawPeer fe;
        final GuestRam ram;
        private final List<AutoCloseable> owned = new ArrayList<>();

        Ctx(RawPeer fe, GuestRam ram) {
            this.fe = fe;
            this.ram = ram;
        }

        int eventfd() {
            EventFd e = EventFd.create();
            owned.add(e);
            return e.fd();
        }

        int[] eventfds(int n) {
            int[] fds = new int[n];
            for (int i = 0; i < n; i++) {
                fds[i] = eventfd();
            }
            return fds;
        }

        /** An eventfd in semaphore mode (each read takes one), its counter at 2^40. */
        int semaphoreEventfd() {
            EventFd e = io.mqvirtio.linux.SemaphoreEventFd.create(1L << 40);
            owned.add(e);
            return e.fd();
        }

        /** A memory file of {@code size} bytes (a frontend's log). */
        int memfd(long size) {
            io.mqvirtio.linux.MemFd m = io.mqvirtio.linux.MemFd.create("hostile-log", size);
            owned.add(m);
            return m.fd();
        }

        /** A log of LOG_BYTES given to the backend (SET_LOG_BASE), its reply read. */
        void logBase() {
            fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0), memfd(LOG_BYTES));
            fe.expectReplyTo(Request.SET_LOG_BASE.id);
        }

        /** {@link #logBase}, then LOG_ALL: the backend logging, as while QEMU migrates. */
        void logging() {
            logBase();
            fe.ok(Request.SET_FEATURES, u64(BackendHarness.FEATURES | (1L << Protocol.F_LOG_ALL)));
        }

        int socketFd() {
            UnixSocket.Pair p = UnixSocket.pair();
            owned.add(p);
            return p.first().fd();
        }

        long uva(long off) {
            return ram.uva(off);
        }

        void closeAll() {
            for (AutoCloseable c : owned) {
                try {
                    c.close();
                } catch (Exception ignored) {
                    // test resource
                }
            }
        }
    }

    @FunctionalInterface
    interface Bad {
        /** Sends the bad message(s); returns the request id whose reply (an ack) is expected, if any. */
        int send(Ctx c) throws Exception;
    }

    record Case(Setup setup, long protocolFeatures, Bad bad, Outcome outcome, String logged) {}

    static Named<Case> acked(String name, Setup setup, Bad bad, String logged) {
        return Named.of(name, new Case(setup, BASIC_PF, bad, Outcome.ACK_FAILURE, logged));
    }

    static Named<Case> closed(String name, Setup setup, Bad bad, String logged) {
        return Named.of(name, new Case(setup, BASIC_PF, bad, Outcome.CLOSED, logged));
    }

    static Named<Case> withPf(String name, long pf, Setup setup, Bad bad, Outcome o, String logged) {
        return Named.of(name, new Case(setup, pf, bad, o, logged));
    }

    static final long SIZE = GuestRam.SIZE;
    static final long LOG_PF = BASIC_PF | (1L << Protocol.PF_LOG_SHMFD);
    /** A log that covers the test's guest memory (guest-physical 0 to its end). */
    static final long LOG_BYTES = (GuestRam.GPA_BASE + GuestRam.SIZE) / 4096 / 8;
    static final int NOFD = (int) Protocol.VRING_NOFD;

    /** Sends {@code r} with NEED_REPLY; returns its id. */
    static int ackd(Ctx c, Request r, byte[] payload, int... fds) {
        c.fe.sendAcked(r, payload, fds);
        return r.id;
    }

    /** A ring address message for ring {@code i} with the ring's standard layout, shifted. */
    static byte[] addrs(Ctx c, int i, long descOff, long usedOff, long availOff) {
        return vringAddr(i, 0, c.uva(descOff), c.uva(usedOff), c.uva(availOff), 0);
    }

    static Stream<Named<Case>> cases() {
        GuestRam.RingAt r2 = new GuestRam.RingAt(2, RING, 2 * GuestRam.RING_SPAN, 2 * GuestRam.RING_SPAN + 4096,
                2 * GuestRam.RING_SPAN + 8192);
        return Stream.of(
                // ---- framing: the stream cannot be trusted after these, so the connection closes ----
                closed("version bits 0", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.GET_FEATURES.id, 0, new byte[0]);
                    return 0;
                }, "protocol version 0"),
                closed("version bits 2", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.SET_OWNER.id, 2 | NEED_REPLY, new byte[0]);
                    return 0;
                }, "protocol version 2"),
                closed("version bits 3", Setup.NONE, c -> {
                    c.fe.send(Request.SET_OWNER.id, 3, new byte[0]);
                    return 0;
                }, "protocol version 3"),
                closed("size 4097", Setup.NEGOTIATED, c -> {
                    c.fe.sendRaw(frame(Request.SET_FEATURES.id, V1 | NEED_REPLY, 4097, new byte[0]));
                    return 0;
                }, "payload of 4097 bytes"),
                closed("size 0xffffffff", Setup.NEGOTIATED, c -> {
                    c.fe.sendRaw(frame(Request.SET_FEATURES.id, V1, -1, new byte[0]));
                    return 0;
                }, "payload of 4294967295 bytes"),
                closed("nine descriptors on one message", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.SET_MEM_TABLE.id, V1 | NEED_REPLY, memTable(nineRegions(c)),
                            c.eventfds(9));
                    return 0;
                }, "more than 8 fds"),
                closed("eight descriptors on the header and eight more on the payload", Setup.NEGOTIATED, c -> {
                    byte[] p = memTable(c.ram.region());
                    byte[] f = frame(Request.SET_MEM_TABLE.id, V1 | NEED_REPLY, p.length, p);
                    c.fe.sendRaw(Arrays.copyOf(f, Protocol.HEADER_SIZE), c.eventfds(8));
                    c.fe.sendRaw(Arrays.copyOfRange(f, Protocol.HEADER_SIZE, f.length), c.eventfds(8));
                    return 0;
                }, "carries more than 8 fds"),
                Named.of("header cut short, then hang-up", new Case(Setup.NEGOTIATED, BASIC_PF, c -> {
                    c.fe.sendRaw(Arrays.copyOf(frame(Request.SET_FEATURES.id, V1, 8, u64(0)), 6), c.eventfd());
                    c.fe.socket().shutdown();
                    return 0;
                }, Outcome.HANGUP, "in the middle of a message header")),
                Named.of("payload cut short, then hang-up", new Case(Setup.NEGOTIATED, BASIC_PF, c -> {
                    c.fe.sendRaw(Arrays.copyOf(frame(Request.SET_VRING_CALL.id, V1, 8, u64(0)), 16), c.eventfd());
                    c.fe.socket().shutdown();
                    return 0;
                }, Outcome.HANGUP, "after 4 of 8 payload bytes")),

                // ---- well framed, but not a request we can carry out ----
                acked("unknown request 99", Setup.NEGOTIATED, c -> {
                    c.fe.send(99, V1 | NEED_REPLY, u64(0));
                    return 99;
                }, "unknown request 99"),
                acked("unknown request 0", Setup.NEGOTIATED, c -> {
                    c.fe.send(0, V1 | NEED_REPLY, new byte[0]);
                    return 0;
                }, "unknown request 0"),
                acked("unknown request -1 with fds", Setup.NEGOTIATED, c -> {
                    c.fe.send(-1, V1 | NEED_REPLY, u64(0), c.eventfds(3));
                    return -1;
                }, "unknown request 4294967295"),
                closed("unknown request without REPLY_ACK asked", Setup.NEGOTIATED, c -> {
                    c.fe.send(1000, V1, u64(0));
                    return 0;
                }, "unknown request 1000"),
                acked("REPLY flag on a request", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.SET_OWNER.id, V1 | REPLY | NEED_REPLY, new byte[0]);
                    return Request.SET_OWNER.id;
                }, "REPLY flag"),
                acked("SET_FEATURES with 4 bytes", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_FEATURES, new byte[4]), "payload of 4 bytes, expected 8"),
                acked("SET_FEATURES with 16 bytes", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_FEATURES, new byte[16]), "payload of 16 bytes, expected 8"),
                acked("SET_VRING_NUM with no payload", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_VRING_NUM, new byte[0]), "payload of 0 bytes, expected 8"),
                acked("SET_VRING_ADDR with 32 bytes", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_ADDR, new byte[32]), "payload of 32 bytes, expected 40"),
                acked("SET_OWNER with a payload", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_OWNER, new byte[8]), "payload of 8 bytes, expected 0"),
                closed("GET_FEATURES with a payload", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.GET_FEATURES, new byte[64]);
                    return 0;
                }, "payload of 64 bytes, expected 0"),
                acked("SET_MEM_TABLE of 9 bytes", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, new byte[9]), "0 regions, expected 1..8"),
                acked("SET_MEM_TABLE whose count disagrees with its rows", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, memTable(2, c.ram.region()), c.ram.fd(), c.ram.fd()),
                        "2 regions need 72 bytes"),

                // ---- descriptors ----
                acked("SET_VRING_KICK without its fd", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_KICK, u64(0)), "came with 0 file descriptors"),
                acked("SET_VRING_CALL without its fd", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_CALL, u64(1)), "came with 0 file descriptors"),
                acked("SET_MEM_TABLE without its fd", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, c.ram.memTable()), "came with 0 file descriptors"),
                acked("SET_FEATURES with two fds", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_FEATURES, u64(BackendHarness.FEATURES), c.eventfds(2)),
                        "came with 2 file descriptors"),
                acked("SET_VRING_CALL with three fds", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_CALL, u64(0), c.eventfds(3)), "came with 3 file descriptors"),
                acked("SET_VRING_CALL with NOFD and an fd", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_CALL, u64(NOFD), c.eventfd()), "came with 1 file descriptor"),
                acked("SET_MEM_TABLE with two fds for one region", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, c.ram.memTable(), c.ram.fd(), c.ram.fd()),
                        "came with 2 file descriptors"),
                acked("SET_MEM_TABLE with a socket as memory", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, memTable(new RawPeer.Region(0, 4096, 0x10000, 0)), c.socketFd()),
                        "memory region fd cannot be mapped"),
                acked("SET_MEM_TABLE with an eventfd as memory", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, memTable(new RawPeer.Region(0, 4096, 0x10000, 0)), c.eventfd()),
                        "of a file of 0x0 bytes"),

                // ---- memory tables ----
                acked("SET_MEM_TABLE with 0 regions", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_MEM_TABLE, memTable()), "0 regions, expected 1..8"),
                acked("SET_MEM_TABLE with 9 regions and 8 fds", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(nineRegions(c)), fill(8, c.ram.fd())), "9 regions, expected 1..8"),
                acked("overlapping regions", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE, memTable(
                        new RawPeer.Region(0, 2 << 20, c.uva(0), 0),
                        new RawPeer.Region(1 << 20, 2 << 20, c.uva(2 << 20), 2 << 20)), c.ram.fd(), c.ram.fd()),
                        "memory regions overlap"),
                acked("overlapping frontend addresses", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE, memTable(
                        new RawPeer.Region(0, 2 << 20, c.uva(0), 0),
                        new RawPeer.Region(4L << 30, 2 << 20, c.uva(1 << 20), 2 << 20)), c.ram.fd(), c.ram.fd()),
                        "frontend addresses overlap"),
                acked("huge region", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, 1L << 60, c.uva(0), 0)), c.ram.fd()), "of a file of 0x400000 bytes"),
                acked("region of size 2^64-1", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, -1, c.uva(0), 0)), c.ram.fd()), "memory region of size 18446744073709551615"),
                acked("region of size 0", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, 0, c.uva(0), 0)), c.ram.fd()), "memory region of size 0"),
                acked("mmap offset at the end of the fd", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, 4096, c.uva(0), SIZE)), c.ram.fd()), "reaches byte"),
                acked("mmap offset and size that overflow", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, 1L << 62, c.uva(0), Long.MAX_VALUE - 4095)), c.ram.fd()), "overflows"),
                acked("guest-physical range that wraps", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(-4096, SIZE, c.uva(0), 0)), c.ram.fd()), "wraps the guest-physical"),
                acked("frontend range that wraps", Setup.NEGOTIATED, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, SIZE, -4096, 0)), c.ram.fd()), "wraps the frontend"),
                acked("ADD_MEM_REG overlapping the table", Setup.MEMORY, c -> ackd(c, Request.ADD_MEM_REG,
                        memReg(new RawPeer.Region(GuestRam.GPA_BASE + 4096, 4096, 1L << 46, 0)), c.ram.fd()),
                        "memory regions overlap"),
                acked("ADD_MEM_REG past the end of its fd", Setup.MEMORY, c -> ackd(c, Request.ADD_MEM_REG,
                        memReg(new RawPeer.Region(0, SIZE, 1L << 46, 4096)), c.ram.fd()), "reaches byte"),
                withPf("ADD_MEM_REG without CONFIGURE_MEM_SLOTS", (1L << Protocol.PF_REPLY_ACK), Setup.MEMORY,
                        c -> ackd(c, Request.ADD_MEM_REG, memReg(new RawPeer.Region(0, 4096, 1L << 46, 0)), c.ram.fd()),
                        Outcome.ACK_FAILURE, "needs protocol feature 15"),
                acked("REM_MEM_REG of a region that is not there", Setup.MEMORY, c -> ackd(c, Request.REM_MEM_REG,
                        memReg(new RawPeer.Region(0, 4096, 1L << 46, 0))), "no memory region at gpa 0x0"),
                acked("SET_MEM_TABLE that no longer holds a running ring", Setup.RING, c -> ackd(c, Request.SET_MEM_TABLE,
                        memTable(new RawPeer.Region(0, 1 << 20, c.uva(1 << 20), 1 << 20)), c.ram.fd()),
                        "not inside the shared memory"),

                // ---- rings ----
                acked("ring size 0", Setup.MEMORY, c -> ackd(c, Request.SET_VRING_NUM, state(0, 0)), "ring size 0 is not"),
                acked("ring size 3", Setup.MEMORY, c -> ackd(c, Request.SET_VRING_NUM, state(0, 3)), "ring size 3 is not"),
                acked("ring size 65536", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_NUM, state(0, 65536)), "ring size 65536 is not"),
                acked("ring size 2^31", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_NUM, state(0, 1 << 31)), "ring size 2147483648 is not"),
                acked("SET_VRING_NUM on ring 4 of 4", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_NUM, state(4, RING)), "ring index 4 is beyond the 4 rings"),
                acked("SET_VRING_ADDR on ring 2^32-1", Setup.MEMORY, c -> ackd(c, Request.SET_VRING_ADDR,
                        vringAddr(-1, 0, c.uva(0), c.uva(8192), c.uva(4096), 0)), "ring index 4294967295 is beyond"),
                acked("SET_VRING_BASE on ring 100", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_BASE, state(100, 0)), "ring index 100 is beyond"),
                acked("SET_VRING_KICK on ring 200", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_KICK, u64(200), c.eventfd()), "ring index 200 is beyond"),
                acked("SET_VRING_CALL on ring 255", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_CALL, u64(255), c.eventfd()), "ring index 255 is beyond"),
                acked("SET_VRING_ERR on ring 4", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_ERR, u64(4), c.eventfd()), "ring index 4 is beyond"),
                acked("SET_VRING_ENABLE on ring 4", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_ENABLE, state(4, 1)), "ring index 4 is beyond"),
                closed("GET_VRING_BASE on ring 4", Setup.MEMORY, c -> {
                    c.fe.send(Request.GET_VRING_BASE, state(4, 0));
                    return 0;
                }, "ring index 4 is beyond"),
                // (before: the ring started with features 0, a 12-byte header where such a driver's is 10 bytes)
                acked("kick before SET_FEATURES", Setup.NONE, c -> {
                    c.fe.get(Request.GET_FEATURES);
                    c.fe.send(Request.SET_PROTOCOL_FEATURES, u64(BASIC_PF));
                    c.fe.ok(Request.SET_OWNER, new byte[0]);
                    c.fe.ok(Request.SET_MEM_TABLE, c.ram.memTable(), c.ram.fd());
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, c.ram.vringAddr(r2));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "no features (SET_FEATURES)"),
                acked("kick before the memory table", Setup.NEGOTIATED, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, c.ram.vringAddr(r2));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "no memory table"),
                acked("kick before the ring size", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_ADDR, c.ram.vringAddr(r2));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "no size"),
                acked("kick before the ring addresses", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "no addresses"),
                acked("descriptor table outside memory", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, addrs(c, 2, SIZE, r2.usedOff(), r2.availOff()));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "not inside the shared memory"),
                acked("used ring across the end of memory", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, addrs(c, 2, r2.descOff(), SIZE - 64, r2.availOff()));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "not inside the shared memory"),
                acked("avail ring at frontend address 2^64-2", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, vringAddr(2, 0, c.uva(r2.descOff()), c.uva(r2.usedOff()), -2, 0));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "not inside the shared memory"),
                acked("used ring misaligned", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, addrs(c, 2, r2.descOff(), r2.usedOff() + 1, r2.availOff()));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "not 4-byte aligned"),
                acked("descriptor table misaligned", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, addrs(c, 2, r2.descOff() + 8, r2.usedOff(), r2.availOff()));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.eventfd());
                }, "not 16-byte aligned"),
                acked("SET_VRING_BASE 0x10000", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_BASE, state(0, 0x10000)), "65536 does not fit"),
                // each read of it takes one: readable after every read, it held a level-triggered worker spinning
                acked("kick eventfd in semaphore mode", Setup.MEMORY, c -> {
                    c.fe.ok(Request.SET_VRING_NUM, state(2, RING));
                    c.fe.ok(Request.SET_VRING_ADDR, c.ram.vringAddr(r2));
                    return ackd(c, Request.SET_VRING_KICK, u64(2), c.semaphoreEventfd());
                }, "the kick eventfd is in semaphore mode"),
                acked("SET_VRING_KICK with NOFD", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_KICK, u64(NOFD)), "without a kick fd"),
                acked("SET_VRING_KICK with unknown bits", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_KICK, u64(1L << 9), c.eventfd()), "unknown bits in 0x200"),
                acked("SET_VRING_ENABLE 2", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_ENABLE, state(0, 2)), "2 is neither 0 nor 1"),
                acked("SET_VRING_ADDR with unknown flags", Setup.MEMORY, c -> ackd(c, Request.SET_VRING_ADDR,
                        vringAddr(0, 2, c.uva(0), c.uva(8192), c.uva(4096), 0)), "unknown flags 0x2"),
                acked("SET_VRING_NUM while the ring runs", Setup.RING,
                        c -> ackd(c, Request.SET_VRING_NUM, state(0, 128)), "on ring 0 while it runs"),
                acked("SET_VRING_ADDR moving a running ring", Setup.RING,
                        c -> {
                            GuestRam.RingAt elsewhere = c.ram.ring(1, RING);
                            return ackd(c, Request.SET_VRING_ADDR, vringAddr(0, 0, c.uva(elsewhere.descOff()),
                                    c.uva(elsewhere.usedOff()), c.uva(elsewhere.availOff()), 0));
                        }, "while it runs changes its addresses"),
                acked("SET_FEATURES changing while rings run", Setup.RING, c -> ackd(c, Request.SET_FEATURES,
                        u64(BackendHarness.FEATURES | io.mqvirtio.virtio.VirtioFeatures.bit(io.mqvirtio.net.VirtioNet.F_MQ))),
                        "cannot change while rings run"),

                // ---- features ----
                acked("SET_FEATURES with a bit not offered", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_FEATURES, u64(BackendHarness.FEATURES | (1L << 63))), "were not offered"),
                acked("SET_PROTOCOL_FEATURES with a bit not offered", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_PROTOCOL_FEATURES, u64(BASIC_PF | (1L << 40))), "were not offered"),
                acked("SEND_RARP without RARP", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SEND_RARP, u64(0x563412005452L)), "needs protocol feature 2"),
                acked("NET_SET_MTU without NET_MTU", Setup.NEGOTIATED,
                        c -> ackd(c, Request.NET_SET_MTU, u64(1500)), "needs protocol feature 4"),
                acked("SET_STATUS without STATUS", Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_STATUS, u64(1)), "needs protocol feature 16"),
                // RESET_DEVICE needs its protocol feature, which is not offered: refused, and the ring goes on
                // (before: the device was reset, its status 0, for any frontend that sent it)
                withPf("RESET_DEVICE without RESET_DEVICE", ALL_PF, Setup.RING, c -> {
                    c.fe.ok(Request.SET_STATUS, u64(0xf));
                    assertThat(c.fe.ack(Request.RESET_DEVICE, new byte[0])).as("RESET_DEVICE's ack").isNotZero();
                    assertThat(c.fe.get(Request.GET_STATUS)).as("the status after the refused reset").isEqualTo(0xf);
                    return ackd(c, Request.RESET_DEVICE, new byte[0]);
                }, Outcome.ACK_FAILURE, "needs protocol feature 13"),
                closed("RESET_DEVICE without RESET_DEVICE, no ack asked", Setup.RING, c -> {
                    c.fe.send(Request.RESET_DEVICE, new byte[0]);
                    return 0;
                }, "needs protocol feature 13"),
                closed("GET_STATUS without STATUS", Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.GET_STATUS, new byte[0]);
                    return 0;
                }, "needs protocol feature 16"),
                withPf("NET_SET_MTU 10", ALL_PF, Setup.NEGOTIATED, c -> ackd(c, Request.NET_SET_MTU, u64(10)),
                        Outcome.ACK_FAILURE, "outside 68..65535"),
                withPf("SET_STATUS 0x100", ALL_PF, Setup.NEGOTIATED, c -> ackd(c, Request.SET_STATUS, u64(0x100)),
                        Outcome.ACK_FAILURE, "is not a status byte"),
                closed("SET_LOG_BASE without LOG_SHMFD", Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(4096, 0), c.memfd(4096));
                    return 0;
                }, "needs protocol feature 1"),
                // ---- the dirty log (SET_LOG_BASE has a reply of its own: a refusal closes the connection) ----
                withPf("SET_LOG_BASE with an eventfd as the log", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(4096, 0), c.eventfd());
                    return 0;
                }, Outcome.CLOSED, "of a file of 0x0 bytes"),
                withPf("SET_LOG_BASE past the end of its file", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 4096), c.memfd(LOG_BYTES));
                    return 0;
                }, Outcome.CLOSED, "reaches byte"),
                withPf("SET_LOG_BASE with an offset that overflows", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, Long.MAX_VALUE - 7), c.memfd(LOG_BYTES));
                    return 0;
                }, Outcome.CLOSED, "overflows"),
                withPf("SET_LOG_BASE of 0 bytes", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(0, 0), c.memfd(4096));
                    return 0;
                }, Outcome.CLOSED, "dirty log of 0 bytes"),
                withPf("SET_LOG_BASE of 2^64-1 bytes", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(-1, 0), c.memfd(4096));
                    return 0;
                }, Outcome.CLOSED, "dirty log of 18446744073709551615 bytes"),
                withPf("SET_LOG_BASE not in 64-bit words", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES - 4, 0), c.memfd(LOG_BYTES));
                    return 0;
                }, Outcome.CLOSED, "multiples of 8"),
                withPf("SET_LOG_BASE too small for guest memory", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES / 2, 0), c.memfd(LOG_BYTES));
                    return 0;
                }, Outcome.CLOSED, "which reaches 0x40400000"),
                withPf("SET_LOG_BASE without a descriptor", LOG_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0));
                    return 0;
                }, Outcome.CLOSED, "file descriptor"),
                withPf("LOG_ALL without a log", LOG_PF, Setup.RING, c -> ackd(c, Request.SET_FEATURES,
                        u64(BackendHarness.FEATURES | (1L << Protocol.F_LOG_ALL))), Outcome.ACK_FAILURE, "LOG_ALL without a log"),
                withPf("used ring logged beyond the log", LOG_PF, Setup.RING, c -> {
                    c.logging();
                    GuestRam.RingAt r = c.ram.ring(0, RING);
                    return ackd(c, Request.SET_VRING_ADDR, vringAddr(0, Protocol.VRING_F_LOG, c.uva(r.descOff()),
                            c.uva(r.usedOff()), c.uva(r.availOff()), -4096));
                }, Outcome.ACK_FAILURE, "is logged beyond the log"),
                withPf("a memory table beyond the log while logging", LOG_PF, Setup.MEMORY, c -> {
                    c.logging();
                    return ackd(c, Request.SET_MEM_TABLE, memTable(new RawPeer.Region(1L << 31, 4096, c.uva(0), 0)),
                            c.ram.fd());
                }, Outcome.ACK_FAILURE, "SET_MEM_TABLE: guest memory reaching 0x80001000 while logging"),
                withPf("LOG_ALL with a log that memory has outgrown", LOG_PF, Setup.MEMORY, c -> {
                    c.logBase();
                    c.fe.ok(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(1L << 31, 4096, c.uva(0), 0)), c.ram.fd());
                    return ackd(c, Request.SET_FEATURES, u64(BackendHarness.FEATURES | (1L << Protocol.F_LOG_ALL)));
                }, Outcome.ACK_FAILURE, "SET_FEATURES: LOG_ALL: guest memory reaching 0x80001000"),
                // Regions above 2^63 (or ending at 2^64) reach past any log: a signed comparison took them for memory
                // below it, and a frame landing there was never marked.
                withPf("a memory table above 2^63 while logging", LOG_PF, Setup.MEMORY, c -> {
                    c.logging();
                    return ackd(c, Request.SET_MEM_TABLE, memTable(new RawPeer.Region(1L << 63, 4096, c.uva(0), 0)),
                            c.ram.fd());
                }, Outcome.ACK_FAILURE, "SET_MEM_TABLE: guest memory reaching 0x8000000000001000 while logging"),
                withPf("a memory slot ending at 2^64 while logging", LOG_PF, Setup.MEMORY, c -> {
                    c.logging();
                    return ackd(c, Request.ADD_MEM_REG, memReg(new RawPeer.Region(-4096, 4096, 1L << 46, 0)), c.ram.fd());
                }, Outcome.ACK_FAILURE, "ADD_MEM_REG: guest memory reaching 0x10000000000000000 while logging"),
                withPf("LOG_ALL with memory above 2^63", LOG_PF, Setup.MEMORY, c -> {
                    c.logBase();
                    c.fe.ok(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(-1L << 40, 4096, c.uva(0), 0)), c.ram.fd());
                    return ackd(c, Request.SET_FEATURES, u64(BackendHarness.FEATURES | (1L << Protocol.F_LOG_ALL)));
                }, Outcome.ACK_FAILURE, "SET_FEATURES: LOG_ALL: guest memory reaching 0xffffff0000001000"),
                withPf("SET_LOG_BASE for memory above 2^63", LOG_PF, Setup.NEGOTIATED, c -> {
                    c.fe.ok(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(1L << 63, 4096, c.uva(0), 0)), c.ram.fd());
                    c.fe.send(Request.SET_LOG_BASE, RawPeer.logBase(LOG_BYTES, 0), c.memfd(LOG_BYTES));
                    return 0;
                }, Outcome.CLOSED, "which reaches 0x8000000000001000"),
                acked("SET_VRING_ENDIAN", Setup.MEMORY,
                        c -> ackd(c, Request.SET_VRING_ENDIAN, state(0, 1)), "only little-endian"),
                acked("SET_BACKEND_REQ_FD (not offered)", Setup.MEMORY,
                        c -> ackd(c, Request.SET_BACKEND_REQ_FD, new byte[0], c.socketFd()), "is not supported"),

                // ---- without REPLY_ACK, a failed request closes the connection ----
                withPf("bad ring size, REPLY_ACK not negotiated", 1L << Protocol.PF_MQ, Setup.NEGOTIATED,
                        c -> ackd(c, Request.SET_VRING_NUM, state(0, 3)), Outcome.CLOSED, "ring size 3 is not"),
                withPf("bad ring size, no ack asked", BASIC_PF, Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.SET_VRING_NUM, state(0, 3));
                    return 0;
                }, Outcome.CLOSED, "ring size 3 is not"),
                withPf("overlapping regions, no ack asked", BASIC_PF, Setup.NEGOTIATED, c -> {
                    c.fe.send(Request.SET_MEM_TABLE, memTable(new RawPeer.Region(0, 2 << 20, c.uva(0), 0),
                            new RawPeer.Region(1 << 20, 2 << 20, c.uva(2 << 20), 2 << 20)), c.ram.fd(), c.ram.fd());
                    return 0;
                }, Outcome.CLOSED, "memory regions overlap"),
                withPf("SET_VRING_KICK with extra fds, no ack asked", BASIC_PF, Setup.MEMORY, c -> {
                    c.fe.send(Request.SET_VRING_KICK, u64(0), c.eventfds(4));
                    return 0;
                }, Outcome.CLOSED, "came with 4 file descriptors"));
    }

    static RawPeer.Region[] nineRegions(Ctx c) {
        RawPeer.Region[] r = new RawPeer.Region[9];
        for (int i = 0; i < 9; i++) {
            r[i] = new RawPeer.Region((long) i << 20, 4096, c.uva(0) + ((long) i << 32), 0);
        }
        return r;
    }

    static int[] fill(int n, int fd) {
        int[] a = new int[n];
        Arrays.fill(a, fd);
        return a;
    }

    @TempDir
    Path dir;
    private Path sock;
    private RecordingDevice dev;
    private VhostUserServer server;
    private LogCapture log;
    private Leaks baseline;

    @BeforeAll
    static void warmUp(@TempDir Path d) throws Exception {
        // Load every class a session uses, so the baseline below does not count the JVM's own lazily opened files.
        RecordingDevice dev = new RecordingDevice(2);
        Path s = d.resolve("warm.sock");
        try (VhostUserServer server = VhostUserServer.listen(s, dev)) {
            BackendHarness.assertServesFully(server, s, dev);
            try (RawPeer fe = RawPeer.connect(s)) {
                fe.send(Request.SET_VRING_NUM.id, 0, new byte[0]);
                fe.expectClosed();
            }
        }
    }

    @BeforeEach
    void start() {
        sock = dir.resolve("vu.sock");
        dev = new RecordingDevice(2);
        log = new LogCapture();
        server = VhostUserServer.listen(sock, dev);
        baseline = Leaks.now();
    }

    @AfterEach
    void stop() {
        if (server != null) {
            server.close();
        }
        log.close();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void hostileMessageGetsAClearErrorAndTheSocketServesAgain(Case k) throws Exception {
        try (RawPeer fe = RawPeer.connect(sock); GuestRam ram = new GuestRam();
             EventFd kick = EventFd.create(); EventFd call = EventFd.create()) {
            Ctx c = new Ctx(fe, ram);
            try {
                if (k.setup() != Setup.NONE) {
                    BackendHarness.negotiate(fe, k.protocolFeatures());
                }
                if (k.setup() == Setup.MEMORY || k.setup() == Setup.RING) {
                    fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
                }
                if (k.setup() == Setup.RING) {
                    BackendHarness.setupRing(fe, ram, 0, kick, call);
                    fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
                    assertThat(dev.running()).isEqualTo(1);
                }
                log.clear();
                int request = k.bad().send(c);
                switch (k.outcome()) {
                    case ACK_FAILURE -> {
                        RawPeer.Reply r = fe.read(RawPeer.DEFAULT_TIMEOUT_MS);
                        assertThat(r.request()).as("the ack answers the request").isEqualTo(request);
                        assertThat(r.flags()).isEqualTo(V1 | REPLY);
                        assertThat(r.u64()).as("REPLY_ACK status").isNotZero();
                        // The connection still works.
                        assertThat(fe.get(Request.GET_QUEUE_NUM)).isEqualTo(2);
                    }
                    case CLOSED -> fe.expectClosed();
                    case HANGUP -> BackendHarness.awaitNoSession(server);
                }
            } finally {
                c.closeAll();
            }
        }
        BackendHarness.awaitNoSession(server);
        assertThat(log.lines()).as("warnings logged").anySatisfy(l -> assertThat(l).contains(k.logged()));
        assertThat(dev.running()).as("rings left running").isZero();

        BackendHarness.assertServesFully(server, sock, dev);

        Leaks after = Leaks.settleTo(baseline, 3000);
        assertThat(after.fds()).as("open descriptors, before:%n%s%nafter:%n%s", baseline.describe(), after.describe())
                .isEqualTo(baseline.fds());
        assertThat(after.memfdMaps()).as("memfd mappings:%n%s", after.describe()).isEqualTo(baseline.memfdMaps());
    }
}

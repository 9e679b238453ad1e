package io.mqvirtio.fuzz;

import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static io.mqvirtio.vhostuser.RawPeer.vringAddr;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.BackendSession;
import io.mqvirtio.vhostuser.Channel;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.Request;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Fuzz target (b): a vhost-user backend session ({@link BackendSession} over {@link Channel}) fed arbitrary message
 * streams with descriptors attached, over a real UNIX socket pair, with real memfds as guest memory.
 *
 * <p>Each input is decoded into: a well-formed prefix that brings the session to a deeper state (none; features
 * negotiated; plus a memory table; plus two rings running), guest memory contents for those rings, then fuzzed
 * messages (structured per request, with payload fields drawn from values that matter: ring indexes, sizes, the
 * frontend's real addresses, region rows; or raw bytes, for the framing), each with descriptors of several kinds
 * (eventfds, the guest memfd, a 4 KiB memfd, a socket, an epoll fd). Everything is written to the frontend end, which
 * is then half-closed; the session runs on this thread until it ends, so a run is deterministic.
 *
 * <p>Oracle: nothing escapes {@link BackendSession#run()}; the session ends (end of stream, or it closes the
 * connection) with every ring stopped and the device reset last (once, or more if it asked for resets); every reply is well framed; the device's contract
 * holds throughout ({@link CheckingDevice}); while it runs it never holds more than {@link #SESSION_FD_BOUND}
 * descriptors (sampled by a second thread: a message dribbled in pieces with descriptors attached must not
 * accumulate them); afterwards this process holds exactly the descriptors and memfd
 * mappings it held before; the JVM never crashes; and every {@value #SERVER_CHECK_EVERY} inputs a real
 * {@link VhostUserServer} on the same device gives a fresh, well-formed frontend full service.
 */
public final class SessionFuzzer {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    static final int V1 = Protocol.VERSION;
    static final int NEED_REPLY = Protocol.FLAG_NEED_REPLY;
    static final long GPA_BASE = 0x4000_0000L;
    static final long MEM_SIZE = 1 << 20;
    static final long RING_SPAN = 64 << 10;
    static final int RING = 256;
    static final int PAIRS = 2;
    static final int MAX_MESSAGES = 200;
    static final int MAX_FDS = 48;
    static final int SERVER_CHECK_EVERY = 1000;
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
            | VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES);
    static final long SESSION_PF = (1L << Protocol.PF_REPLY_ACK) | (1L << Protocol.PF_CONFIGURE_MEM_SLOTS)
            | (1L << Protocol.PF_STATUS) | (1L << Protocol.PF_LOG_SHMFD);
    static final Request[] REQUESTS = Request.values();

    static CheckingDevice device;
    static MemFd guestFd;
    static Mmap guest;       // the frontend's view of guest memory
    static MemFd smallFd;    // 4 KiB: a region of the guest's size reaches past its end
    static EventFd event0;
    static EventFd event1;
    static Epoll epoll;
    static UnixSocket.Pair sockets;
    static int[] fdKinds;    // what a message may carry: 0,1 eventfds, 2 guest memfd, 3 small memfd, 4 socket, 5 epoll
    static int fdLimit;
    static long[] baselineFds;
    static long guestMemfdMaps;
    static long vmPages;
    static int baselineFdCount;
    static Path serverDir;
    static VhostUserServer server;
    static long inputs;
    /**
     * Descriptors a session may hold at once beyond those open before it: the kick, call and error eventfds of its
     * rings, one message's descriptors ({@link io.mqvirtio.vhostuser.Channel}'s bound), and a few of the JVM's.
     */
    static final int SESSION_FD_BOUND = 3 * 2 * PAIRS + 8 + 4;
    static volatile boolean sampling;
    static volatile boolean inSample; // the sampler is counting (it holds a descriptor of /proc/self/fd meanwhile)
    static volatile int sampledMax;

    private SessionFuzzer() {}

    public static void fuzzerInitialize() throws IOException {
        FuzzSupport.quietLogging();
        device = new CheckingDevice(PAIRS);
        guestFd = MemFd.create("mqv-fuzz-guest", MEM_SIZE);
        guest = Mmap.shared(guestFd, 0, MEM_SIZE);
        smallFd = MemFd.create("mqv-fuzz-small", 4096);
        event0 = EventFd.create();
        event1 = EventFd.create();
        epoll = Epoll.create(1);
        sockets = UnixSocket.pair();
        fdKinds = new int[] {event0.fd(), event1.fd(), guestFd.fd(), smallFd.fd(), sockets.second().fd(), epoll.fd()};
        serverDir = Files.createTempDirectory("mqv-fuzz");
        server = VhostUserServer.listen(serverDir.resolve("vu.sock"), device);
        serverCheck(); // the server works before any fuzzing, with every descriptor it needs opened once
        takeBaseline();
        // The partial-message oracle: while a session runs, another thread counts our descriptors. A message
        // dribbled in pieces with descriptors on each used to make the session hold all of them until it completed.
        Thread.ofPlatform().name("fd-sampler").daemon(true).start(() -> {
            while (true) {
                if (sampling) {
                    inSample = true;
                    if (sampling) {
                        int n = FuzzSupport.fdCount();
                        if (n > sampledMax) {
                            sampledMax = n;
                        }
                    }
                    inSample = false;
                    java.util.concurrent.locks.LockSupport.parkNanos(50_000); // leave the CPU to the session mostly
                } else {
                    java.util.concurrent.locks.LockSupport.parkNanos(200_000);
                }
            }
        });
    }

    public static void fuzzerTearDown() throws IOException {
        server.close();
        Files.deleteIfExists(serverDir.resolve("vu.sock"));
        Files.deleteIfExists(serverDir);
    }

    private static void takeBaseline() {
        baselineFds = FuzzSupport.openFds(4096);
        int highest = 0;
        for (int fd = 0; fd < 4096; fd++) {
            if ((baselineFds[fd >>> 6] & (1L << fd)) != 0) {
                highest = fd;
            }
        }
        fdLimit = highest + 1 + 4 * MAX_FDS; // a session's descriptors are numbered from the lowest free one up
        baselineFdCount = FuzzSupport.fdCount();
        guestMemfdMaps = FuzzSupport.memfdMappings("mqv-fuzz");
        vmPages = FuzzSupport.virtualPages();
    }

    /**
     * After a session this process must hold exactly the descriptors it held before: as many as before in
     * /proc/self/fd, and our own still open (a double close would take one). When the count differs, the new ones
     * are named; one the JVM itself opened meanwhile (a file, not a socket, eventfd, epoll or memfd) becomes part of
     * the baseline.
     */
    private static void checkDescriptors() {
        for (int fd : fdKinds) {
            if (!FuzzSupport.isOpen(fd)) {
                throw new FuzzFinding("descriptor " + fd + " of the frontend was closed by the backend");
            }
        }
        if (FuzzSupport.fdCount() == baselineFdCount) {
            return;
        }
        List<String> leaked = FuzzSupport.leaked(baselineFds, FuzzSupport.openFds(fdLimit));
        for (String l : leaked) {
            if (l.contains("socket:") || l.contains("anon_inode:") || l.contains("memfd:") || l.endsWith("?")) {
                throw new FuzzFinding("descriptors leaked by the session: " + leaked);
            }
        }
        takeBaseline();
    }

    public static void fuzzerTestOneInput(FuzzedDataProvider d) {
        guest.segment().asSlice(0, 4 * RING_SPAN).fill((byte) 0);

        // ---- the frontend's side of the conversation, decided up front ----
        Script s = new Script();
        int prefix = d.consumeInt(0, 3);
        long pf = d.consumeInt(0, 3) == 0 ? d.consumeLong() & offeredProtocolFeatures()
                : offeredProtocolFeatures() & ~(d.consumeBoolean() ? 0 : (1L << Protocol.PF_REPLY_ACK));
        long features = d.consumeInt(0, 3) == 0 ? d.consumeLong() & offeredFeatures() : FEATURES;
        if (prefix >= 1) {
            s.msg(Request.GET_FEATURES.id, V1, new byte[0]);
            s.msg(Request.GET_PROTOCOL_FEATURES.id, V1, new byte[0]);
            s.msg(Request.SET_PROTOCOL_FEATURES.id, V1, u64(pf));
            s.msg(Request.SET_OWNER.id, V1, new byte[0]);
            s.msg(Request.SET_FEATURES.id, V1, u64(features));
            s.msg(Request.GET_QUEUE_NUM.id, V1, new byte[0]);
        }
        if (prefix >= 2) {
            s.msg(Request.SET_MEM_TABLE.id, V1, memTable(new long[] {GPA_BASE, MEM_SIZE, guest.segment().address(), 0}),
                    guestFd.fd());
        }
        if (prefix >= 3) {
            for (int i = 0; i < 2; i++) {
                s.msg(Request.SET_VRING_NUM.id, V1, state(i, RING));
                s.msg(Request.SET_VRING_BASE.id, V1, state(i, 0));
                s.msg(Request.SET_VRING_ADDR.id, V1, vringAddr(i, 0, ringUva(i, 0), ringUva(i, 2), ringUva(i, 1), 0));
                s.msg(Request.SET_VRING_CALL.id, V1, u64(i), event1.fd());
                s.msg(Request.SET_VRING_KICK.id, V1, u64(i), event0.fd());
                s.msg(Request.SET_VRING_ENABLE.id, V1, state(i, 1));
            }
        }
        writeRings(d);
        while (d.remainingBytes() > 0 && s.messages < MAX_MESSAGES) {
            fuzzedMessage(d, s);
        }

        // ---- the session, on this thread, until it ends ----
        int resetsBefore = device.resets();
        UnixSocket.Pair pair = UnixSocket.pair();
        UnixSocket frontend = pair.first();
        List<Reply> replies;
        int before = FuzzSupport.fdCount();
        try {
            s.sendTo(frontend);
            FuzzSupport.shutdownWrite(frontend.fd());
            sampledMax = 0;
            sampling = true;
            try {
                new BackendSession("fuzz", new Channel(pair.second()), device).run();
            } finally {
                sampling = false;
                while (inSample) {
                    Thread.onSpinWait(); // its listing's descriptor must be closed before we count ours
                }
            }
            replies = drain(frontend);
        } finally {
            frontend.close();
            pair.second().close(); // closed by the session already; close is idempotent
        }
        if (sampledMax > before + SESSION_FD_BOUND) {
            throw new FuzzFinding("the session held " + (sampledMax - before) + " descriptors at once, more than "
                    + SESSION_FD_BOUND);
        }

        // ---- what must hold afterwards ----
        if (device.running() != 0) {
            throw new FuzzFinding("the session ended with " + device.running() + " rings running");
        }
        // teardown resets the device last; RESET_OWNER / RESET_DEVICE on the way may have reset it before
        if (device.resets() <= resetsBefore || !device.endedWithReset()) {
            throw new FuzzFinding("the session ended with " + (device.resets() - resetsBefore) + " device resets"
                    + (device.endedWithReset() ? "" : ", not last"));
        }
        for (Reply r : replies) {
            // every reply this backend sends is a u64 or a vring state: 8 bytes
            if (r.flags != (V1 | Protocol.FLAG_REPLY) || r.payload.length != 8) {
                throw new FuzzFinding("malformed reply " + r);
            }
        }
        if (replies.size() > s.bytes() / Protocol.HEADER_SIZE) {
            throw new FuzzFinding(replies.size() + " replies to at most " + s.bytes() / Protocol.HEADER_SIZE + " messages");
        }
        checkDescriptors();
        long pages = FuzzSupport.virtualPages();
        if (pages != vmPages) {
            // Something was mapped or unmapped (the JVM's own heap and malloc arenas move too): count the memfd
            // mappings, which only sessions make.
            long maps = FuzzSupport.memfdMappings("mqv-fuzz");
            if (maps != guestMemfdMaps) {
                throw new FuzzFinding("memfd mappings: " + maps + " after the session, " + guestMemfdMaps + " before");
            }
            vmPages = pages;
        }
        if (++inputs % SERVER_CHECK_EVERY == 0) {
            serverCheck();
            int n = FuzzSupport.fdCount();
            if (n != baselineFdCount) {
                throw new FuzzFinding(n + " descriptors open in /proc/self/fd, " + baselineFdCount + " at the start");
            }
        }
    }

    // ---- the fuzzed part ----------------------------------------------------------------------------------------------

    private static void fuzzedMessage(FuzzedDataProvider d, Script s) {
        int kind = d.consumeInt(0, 15);
        if (kind == 0) { // raw bytes: framing (a header split anywhere, a bad version, a size that never comes)
            s.raw(d.consumeBytes(d.consumeInt(1, 48)), randomFds(d, s));
            return;
        }
        int id;
        Request r = null;
        int pick = d.consumeInt(0, REQUESTS.length);
        if (pick == REQUESTS.length) {
            id = d.consumeInt(0, 7) == 0 ? d.consumeInt() : d.consumeInt(0, 64);
            r = Request.of(id);
        } else {
            r = REQUESTS[pick];
            id = r.id;
        }
        int flags = d.consumeInt(0, 15) == 0 ? d.consumeInt() : V1 | (d.consumeBoolean() ? NEED_REPLY : 0);
        byte[] payload = r == null ? d.consumeBytes(d.consumeInt(0, 64)) : payload(r, d);
        if (d.consumeInt(0, 15) == 0) { // a payload one row or a few bytes off its shape
            payload = Arrays.copyOf(payload, Math.max(0, payload.length + d.consumeInt(-9, 9)));
        }
        int[] fds = d.consumeInt(0, 3) == 0 ? randomFds(d, s) : rightFds(r, payload, s);
        if (d.consumeInt(0, 31) == 0) { // a size field that lies
            int size = d.consumeBoolean() ? d.consumeInt() : payload.length + d.consumeInt(-16, 4100);
            s.raw(header(id, flags, size), fds);
            s.raw(payload);
            s.messages++;
        } else {
            s.msg(id, flags, payload, fds);
        }
    }

    private static byte[] payload(Request r, FuzzedDataProvider d) {
        return switch (r.payload) {
            case NONE -> new byte[0];
            case U64 -> u64(switch (r) {
                case SET_FEATURES -> d.consumeBoolean() ? d.consumeLong() & offeredFeatures() : d.consumeLong();
                case SET_PROTOCOL_FEATURES -> d.consumeBoolean() ? d.consumeLong() & offeredProtocolFeatures() : d.consumeLong();
                case SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR -> d.consumeInt(0, 7) == 0 ? d.consumeLong()
                        : ringIndex(d) | (d.consumeBoolean() ? Protocol.VRING_NOFD : 0);
                case NET_SET_MTU -> d.consumeBoolean() ? d.consumeLong() : d.consumeInt(0, 70_000);
                case SET_STATUS -> d.consumeBoolean() ? d.consumeLong() : d.consumeInt(0, 300);
                default -> d.consumeLong();
            });
            case VRING_STATE -> state(ringIndex(d), switch (d.consumeInt(0, 3)) {
                case 0 -> d.consumeInt();
                case 1 -> d.consumeInt(0, 2);
                default -> r == Request.SET_VRING_NUM ? 1 << d.consumeInt(0, 16) : d.consumeInt(0, 0x1_0001);
            });
            case VRING_ADDR -> {
                int i = ringIndex(d);
                int slot = Math.floorMod(i, 4);
                yield vringAddr(i, d.consumeInt(0, 7) == 0 ? d.consumeInt() : 0, uva(d, slot, 0), uva(d, slot, 2),
                        uva(d, slot, 1), d.consumeLong());
            }
            case MEM_TABLE -> {
                int n = d.consumeInt(0, 15) == 0 ? d.consumeInt(0, 10) : d.consumeInt(1, 3);
                long[][] rows = new long[n][];
                for (int k = 0; k < n; k++) {
                    rows[k] = region(d);
                }
                yield memTable(rows);
            }
            case MEM_REGION -> {
                long[] row = region(d);
                yield ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN).putLong(d.consumeInt(0, 7) == 0 ? d.consumeLong() : 0)
                        .putLong(row[0]).putLong(row[1]).putLong(row[2]).putLong(row[3]).array();
            }
            case CONFIG -> d.consumeBytes(d.consumeInt(0, 300));
            default -> d.consumeBytes(r.payload.size);
        };
    }

    private static int ringIndex(FuzzedDataProvider d) {
        return d.consumeInt(0, 15) == 0 ? d.consumeInt() : d.consumeInt(0, 2 * PAIRS);
    }

    /** A ring part's frontend address: where a driver would put it, near there, or anything. */
    private static long uva(FuzzedDataProvider d, int slot, int part) {
        return switch (d.consumeInt(0, 7)) {
            case 0 -> d.consumeLong();
            case 1 -> ringUva(slot, part) + d.consumeInt(-64, 64);
            case 2 -> guest.segment().address() + MEM_SIZE - d.consumeInt(0, 8192);
            default -> ringUva(slot, part);
        };
    }

    /** One memory-table row: guest-physical address, size, frontend address, mmap offset. */
    private static long[] region(FuzzedDataProvider d) {
        long base = guest.segment().address();
        long gpa = switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeLong();
            case 1 -> GPA_BASE + 4096L * d.consumeInt(-4, 300);
            case 2 -> -4096L * d.consumeInt(1, 300);
            default -> GPA_BASE;
        };
        long size = switch (d.consumeInt(0, 4)) {
            case 0 -> d.consumeLong();
            case 1 -> d.consumeLong(0, 2 * MEM_SIZE);
            case 2 -> 4096L * d.consumeInt(0, 300);
            default -> MEM_SIZE;
        };
        long uva = switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeLong();
            case 1 -> base + 4096L * d.consumeInt(-300, 300);
            default -> base;
        };
        long offset = switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeLong();
            case 1 -> 4096L * d.consumeInt(0, 300);
            case 2 -> d.consumeInt(0, 8192);
            default -> 0;
        };
        return new long[] {gpa, size, uva, offset};
    }

    /** The descriptors the request's row asks for (eventfds for rings, the guest memfd for memory). */
    private static int[] rightFds(Request r, byte[] payload, Script s) {
        if (r == null) {
            return new int[0];
        }
        int[] fds = switch (r.fds) {
            case NONE -> new int[0];
            case ONE, ANY -> new int[] {r.payload == Request.Payload.MEM_REGION ? guestFd.fd() : event0.fd()};
            case UNLESS_NOFD -> payload.length >= 8 && (le64(payload, 0) & Protocol.VRING_NOFD) != 0 ? new int[0]
                    : new int[] {event0.fd()};
            case ONE_PER_REGION -> {
                int n = payload.length >= 4 ? Math.min(Math.max(le32(payload, 0), 0), 8) : 0;
                int[] f = new int[n];
                Arrays.fill(f, guestFd.fd());
                yield f;
            }
        };
        return s.fdsLeft(fds.length) ? fds : new int[0];
    }

    private static int[] randomFds(FuzzedDataProvider d, Script s) {
        int n = d.consumeInt(0, 3);
        if (!s.fdsLeft(n)) {
            return new int[0];
        }
        int[] fds = new int[n];
        for (int i = 0; i < n; i++) {
            fds[i] = fdKinds[d.consumeInt(0, fdKinds.length - 1)];
        }
        return fds;
    }

    /** Guest memory behind rings 0 and 1 (as the prefix places them): nothing, a few chains, or raw bytes. */
    private static void writeRings(FuzzedDataProvider d) {
        MemorySegment g = guest.segment();
        for (int i = 0; i < 2; i++) {
            long desc = ringOff(i, 0), avail = ringOff(i, 1);
            switch (d.consumeInt(0, 2)) {
                case 0 -> { }
                case 1 -> {
                    int n = d.consumeInt(0, 8);
                    for (int k = 0; k < n; k++) {
                        long b = desc + 16L * k;
                        g.set(LE64, b, d.consumeBoolean() ? GPA_BASE + 4 * RING_SPAN + d.consumeInt(0, 8192) : d.consumeLong());
                        g.set(LE32, b + 8, d.consumeInt(0, 7) == 0 ? d.consumeInt() : d.consumeInt(0, 2048));
                        g.set(LE16, b + 12, (short) d.consumeInt(0, 7));
                        g.set(LE16, b + 14, (short) d.consumeInt(0, RING));
                        g.set(LE16, avail + SplitRing.AVAIL_RING + 2L * k, (short) d.consumeInt(0, RING));
                    }
                    g.set(LE16, avail + SplitRing.AVAIL_IDX, (short) (d.consumeInt(0, 7) == 0 ? d.consumeInt() : n));
                }
                default -> {
                    byte[] b = d.consumeBytes(d.consumeInt(0, 128));
                    MemorySegment.copy(b, 0, g, ValueLayout.JAVA_BYTE, desc, b.length);
                    g.set(LE16, avail + SplitRing.AVAIL_IDX, d.consumeShort());
                }
            }
        }
    }

    // ---- a fresh, well-formed frontend on the real server --------------------------------------------------------------

    /**
     * A well-formed frontend connects to the server (same device as every fuzzed session), negotiates with acks,
     * shares memory, starts and enables two rings, and reads both rings' bases back; every ack is 0 and the device
     * saw the rings start and stop and one reset.
     */
    static void serverCheck() {
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (server.hasSession()) {
            if (System.nanoTime() > deadline) {
                throw new FuzzFinding("the server's last session did not end");
            }
            Thread.onSpinWait();
        }
        int resets = device.resets();
        int starts = device.starts();
        guest.segment().asSlice(0, 4 * RING_SPAN).fill((byte) 0);
        Script s = new Script();
        s.msg(Request.GET_FEATURES.id, V1, new byte[0]);
        s.msg(Request.GET_PROTOCOL_FEATURES.id, V1, new byte[0]);
        s.msg(Request.SET_PROTOCOL_FEATURES.id, V1, u64(SESSION_PF | (1L << Protocol.PF_MQ)));
        s.msg(Request.SET_OWNER.id, V1 | NEED_REPLY, new byte[0]);
        s.msg(Request.SET_FEATURES.id, V1 | NEED_REPLY, u64(FEATURES));
        s.msg(Request.SET_MEM_TABLE.id, V1 | NEED_REPLY,
                memTable(new long[] {GPA_BASE, MEM_SIZE, guest.segment().address(), 0}), guestFd.fd());
        for (int i = 0; i < 2; i++) {
            s.msg(Request.SET_VRING_NUM.id, V1 | NEED_REPLY, state(i, RING));
            s.msg(Request.SET_VRING_BASE.id, V1 | NEED_REPLY, state(i, 0));
            s.msg(Request.SET_VRING_ADDR.id, V1 | NEED_REPLY, vringAddr(i, 0, ringUva(i, 0), ringUva(i, 2), ringUva(i, 1), 0));
            s.msg(Request.SET_VRING_CALL.id, V1 | NEED_REPLY, u64(i), event1.fd());
            s.msg(Request.SET_VRING_KICK.id, V1 | NEED_REPLY, u64(i), event0.fd());
            s.msg(Request.SET_VRING_ENABLE.id, V1 | NEED_REPLY, state(i, 1));
        }
        s.msg(Request.GET_VRING_BASE.id, V1, state(0, 0));
        s.msg(Request.GET_VRING_BASE.id, V1, state(1, 0));
        List<Reply> replies;
        try (UnixSocket fe = UnixSocket.connect(server.path())) {
            s.sendTo(fe);
            FuzzSupport.shutdownWrite(fe.fd());
            replies = drain(fe);
        }
        List<String> got = new ArrayList<>();
        for (Reply r : replies) {
            got.add(Request.of(r.request) + "=" + (r.payload.length == 8 ? le64(r.payload, 0) : -1));
        }
        long offered = offeredFeatures();
        List<String> want = new ArrayList<>(List.of("GET_FEATURES=" + offered,
                "GET_PROTOCOL_FEATURES=" + offeredProtocolFeatures(), "SET_OWNER=0", "SET_FEATURES=0", "SET_MEM_TABLE=0"));
        for (int i = 0; i < 2; i++) {
            for (String m : List.of("SET_VRING_NUM", "SET_VRING_BASE", "SET_VRING_ADDR", "SET_VRING_CALL", "SET_VRING_KICK",
                    "SET_VRING_ENABLE")) {
                want.add(m + "=0");
            }
        }
        want.add("GET_VRING_BASE=0");
        want.add("GET_VRING_BASE=1"); // le32 index 1, le32 num 0
        if (!got.equals(want)) {
            throw new FuzzFinding("a well-formed frontend was not served fully: replies " + got + ", expected " + want);
        }
        while (server.hasSession()) {
            if (System.nanoTime() > deadline) {
                throw new FuzzFinding("the well-formed session did not end");
            }
            Thread.onSpinWait();
        }
        if (device.starts() != starts + 2 || device.resets() != resets + 1 || device.running() != 0) {
            throw new FuzzFinding("the well-formed session: " + (device.starts() - starts) + " rings started, "
                    + (device.resets() - resets) + " resets, " + device.running() + " running");
        }
    }

    // ---- wire helpers ---------------------------------------------------------------------------------------------------

    record Reply(int request, int flags, byte[] payload) {
        @Override
        public String toString() {
            return "Reply[request=" + request + " flags=0x" + Integer.toHexString(flags) + " size=" + payload.length + "]";
        }
    }

    /** What the frontend will send: byte chunks, each with the descriptors that ride on its first byte. */
    static final class Script {
        final List<byte[]> chunks = new ArrayList<>();
        final List<int[]> fds = new ArrayList<>();
        int messages;
        int fdCount;

        void msg(int id, int flags, byte[] payload, int... f) {
            ByteArrayOutputStream b = new ByteArrayOutputStream(12 + payload.length);
            b.writeBytes(header(id, flags, payload.length));
            b.writeBytes(payload);
            raw(b.toByteArray(), f);
            messages++;
        }

        void raw(byte[] bytes, int... f) {
            if (bytes.length == 0 && f.length > 0) {
                bytes = new byte[1]; // descriptors need a byte to ride on
            }
            chunks.add(bytes);
            fds.add(f);
        }

        boolean fdsLeft(int n) {
            if (fdCount + n > MAX_FDS) {
                return false;
            }
            fdCount += n;
            return true;
        }

        int bytes() {
            int total = 0;
            for (byte[] c : chunks) {
                total += c.length;
            }
            return total;
        }

        /** Sends the chunks, coalescing those without descriptors into one send (a stream has no boundaries). */
        void sendTo(UnixSocket socket) {
            int total = bytes();
            try (Arena a = Arena.ofConfined()) {
                MemorySegment buf = a.allocate(Math.max(1, total));
                int at = 0;
                int start = 0;
                int[] startFds = new int[0];
                for (int i = 0; i < chunks.size(); i++) {
                    byte[] c = chunks.get(i);
                    if (fds.get(i).length > 0 && at > start) {
                        socket.send(buf.asSlice(start, at - start), startFds);
                        start = at;
                        startFds = new int[0];
                    }
                    if (fds.get(i).length > 0) {
                        startFds = fds.get(i);
                    }
                    MemorySegment.copy(c, 0, buf, ValueLayout.JAVA_BYTE, at, c.length);
                    at += c.length;
                }
                if (at > start) {
                    socket.send(buf.asSlice(start, at - start), startFds);
                }
            }
        }
    }

    /** Reads replies until the backend closes; anything that is not a whole reply, or carries descriptors, is a finding. */
    static List<Reply> drain(UnixSocket s) {
        ByteArrayOutputStream all = new ByteArrayOutputStream();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment buf = a.allocate(4096);
            while (true) {
                UnixSocket.Received r;
                try {
                    r = s.recv(buf, 4);
                } catch (ErrnoException e) {
                    if (e.errno() == ErrnoException.ECONNRESET) {
                        break; // the backend closed with our messages unread: its replies came before this
                    }
                    throw e;
                }
                if (r.fds().length > 0) {
                    for (int fd : r.fds()) {
                        io.mqvirtio.linux.Fd.adopt(fd).close();
                    }
                    throw new FuzzFinding("the backend sent descriptors");
                }
                if (r.bytes() <= 0) {
                    break;
                }
                all.writeBytes(buf.asSlice(0, r.bytes()).toArray(ValueLayout.JAVA_BYTE));
            }
        }
        byte[] b = all.toByteArray();
        List<Reply> out = new ArrayList<>();
        int at = 0;
        while (at < b.length) {
            if (b.length - at < 12) {
                throw new FuzzFinding("a reply header cut short: " + (b.length - at) + " bytes");
            }
            int size = le32(b, at + 8);
            if (size < 0 || size > Protocol.MAX_PAYLOAD || b.length - at - 12 < size) {
                throw new FuzzFinding("a reply announces " + size + " bytes, " + (b.length - at - 12) + " follow");
            }
            out.add(new Reply(le32(b, at), le32(b, at + 4), Arrays.copyOfRange(b, at + 12, at + 12 + size)));
            at += 12 + size;
        }
        return out;
    }

    static long offeredFeatures() {
        return device.features() | VirtioFeatures.bit(Protocol.F_PROTOCOL_FEATURES) | (1L << Protocol.F_LOG_ALL);
    }

    static long offeredProtocolFeatures() {
        return device.protocolFeatures() | SESSION_PF;
    }

    static long ringOff(int slot, int part) {
        SplitRing.Layout l = SplitRing.Layout.contiguous(RING);
        return slot * RING_SPAN + switch (part) {
            case 0 -> l.descOffset();
            case 1 -> l.availOffset();
            default -> l.usedOffset();
        };
    }

    static long ringUva(int slot, int part) {
        return guest.segment().address() + ringOff(slot, part);
    }

    static byte[] header(int id, int flags, int size) {
        return ByteBuffer.allocate(12).order(ByteOrder.LITTLE_ENDIAN).putInt(id).putInt(flags).putInt(size).array();
    }

    static byte[] memTable(long[]... rows) {
        ByteBuffer b = ByteBuffer.allocate(8 + 32 * rows.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putInt(rows.length).putInt(0);
        for (long[] r : rows) {
            b.putLong(r[0]).putLong(r[1]).putLong(r[2]).putLong(r[3]);
        }
        return b.array();
    }

    static int le32(byte[] b, int at) {
        return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).getInt(at);
    }

    static long le64(byte[] b, int at) {
        return ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).getLong(at);
    }
}

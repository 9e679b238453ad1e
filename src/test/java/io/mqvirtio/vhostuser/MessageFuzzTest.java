package io.mqvirtio.vhostuser;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.UnixSocket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;
import net.jqwik.api.lifecycle.AfterProperty;
import net.jqwik.api.lifecycle.BeforeProperty;

/**
 * Property test of the message parser and the session behind it: random sequences of messages (known and unknown
 * requests, random flags, payloads built from values that reach deep into the handlers: ring indexes, sizes, the
 * frontend's real addresses, region rows; random descriptors of several kinds) into a session over a real socket
 * pair with real memfds. Whatever comes, the session never fails inside (no ERROR logged, nothing escapes its
 * thread), every reply is well formed, an ack is 0 or 1, the session ends when the frontend goes, every ring is
 * stopped and the device reset, and the process holds the same descriptors and mappings as before.
 */
class MessageFuzzTest {
    /** One message: raw header fields, payload, and which descriptors ride along (0 eventfd, 1 memfd, 2 socket). */
    record Msg(int request, int flags, byte[] payload, int[] fdKinds) {}

    /** Request ids of the table, plus some that are not in it; GET_QUEUE_NUM (17) is the sentinel, never random. */
    private static Arbitrary<Integer> requestIds() {
        List<Integer> known = new ArrayList<>();
        for (Request r : Request.values()) {
            if (r != Request.GET_QUEUE_NUM) {
                known.add(r.id);
            }
        }
        return Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(8, Arbitraries.of(known)),
                net.jqwik.api.Tuple.of(1, Arbitraries.integers().filter(i -> i != 17)));
    }

    private static Arbitrary<Integer> flags() {
        return Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(85, Arbitraries.just(RawPeer.V1 | RawPeer.NEED_REPLY)),
                net.jqwik.api.Tuple.of(10, Arbitraries.just(RawPeer.V1)),
                net.jqwik.api.Tuple.of(5, Arbitraries.of(RawPeer.V1 | RawPeer.REPLY, RawPeer.V1 | RawPeer.REPLY | RawPeer.NEED_REPLY,
                        0x7fff_fff1, 0, 2, 3)));
    }

    /** Symbolic 8-byte words, resolved against the session's memory when sent. */
    private static Arbitrary<long[]> words() {
        Arbitrary<Long> word = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(5, Arbitraries.longs().between(0, 5)),
                net.jqwik.api.Tuple.of(3, Arbitraries.of(0L, 1L, 3L, 256L, 1024L, 32768L, 65536L, 0x100L, 0x1ffL, 0x10000L,
                        (long) RING_SIZE << 32, 1L << 32 | RING_SIZE, -1L, Long.MIN_VALUE, 4096L)),
                net.jqwik.api.Tuple.of(4, Arbitraries.of(UVA_DESC, UVA_AVAIL, UVA_USED, UVA_BASE, GPA_BASE, RAM_SIZE,
                        UVA_END, UVA_MISALIGNED)),
                net.jqwik.api.Tuple.of(1, Arbitraries.longs()));
        return word.array(long[].class).ofMinSize(0).ofMaxSize(6);
    }

    // Markers replaced by real values of the frontend's memory (its mapping moves from try to try).
    static final long UVA_BASE = 0x7e57_0000_0000L, UVA_DESC = UVA_BASE + 1, UVA_AVAIL = UVA_BASE + 2,
            UVA_USED = UVA_BASE + 3, UVA_END = UVA_BASE + 4, UVA_MISALIGNED = UVA_BASE + 5, GPA_BASE = GuestRam.GPA_BASE, RAM_SIZE = 1L << 20;
    static final int RING_SIZE = 64;

    @Provide
    Arbitrary<List<Msg>> sequences() {
        Arbitrary<Msg> structured = Combinators.combine(requestIds(), flags(), words(),
                Arbitraries.frequencyOf(net.jqwik.api.Tuple.of(4, Arbitraries.just(new int[0])),
                        net.jqwik.api.Tuple.of(1, Arbitraries.integers().between(0, 2).array(int[].class).ofMaxSize(3))),
                Arbitraries.integers().between(-3, 3),
                Arbitraries.integers().between(0, 9))
                .as((req, fl, w, fds, trim, exact) -> {
                    ByteBuffer b = ByteBuffer.allocate(8 * w.length).order(ByteOrder.LITTLE_ENDIAN);
                    for (long x : w) {
                        b.putLong(x);
                    }
                    byte[] p = b.array();
                    Request r = Request.of(req);
                    int len;
                    if (r != null && r.payload.size >= 0 && exact < 7) {
                        len = r.payload.size; // mostly the size the request wants, so handlers get to run
                    } else {
                        len = Math.max(0, p.length + trim); // sometimes not a multiple of 8
                    }
                    return new Msg(req, fl, java.util.Arrays.copyOf(p, len), fds);
                });
        // A memory-table-shaped payload now and then, so that rings can really start.
        Arbitrary<Msg> table = Combinators.combine(flags(), Arbitraries.integers().between(0, 2),
                Arbitraries.of(0L, 4096L, RAM_SIZE - 4096, RAM_SIZE), Arbitraries.of(RAM_SIZE, 4096L, 0L, -4096L))
                .as((fl, extraFds, off, size) -> {
                    ByteBuffer b = ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN);
                    b.putInt(1).putInt(0).putLong(GPA_BASE).putLong(size).putLong(UVA_BASE).putLong(off);
                    int[] fds = new int[1 + extraFds];
                    fds[0] = 1;
                    return new Msg(Request.SET_MEM_TABLE.id, fl, b.array(), fds);
                });
        Arbitrary<Msg> ring = Combinators.combine(Arbitraries.of(Request.SET_VRING_NUM, Request.SET_VRING_ADDR,
                Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_BASE, Request.GET_VRING_BASE,
                Request.SET_VRING_ENABLE), Arbitraries.integers().between(0, 4), flags())
                .as((r, idx, fl) -> {
                    ByteBuffer b = ByteBuffer.allocate(r.payload.size).order(ByteOrder.LITTLE_ENDIAN);
                    int[] fds = new int[0];
                    switch (r) {
                        case SET_VRING_ADDR -> b.putInt(idx).putInt(0).putLong(UVA_DESC).putLong(UVA_USED).putLong(UVA_AVAIL)
                                .putLong(0);
                        case SET_VRING_KICK, SET_VRING_CALL -> {
                            b.putLong(idx);
                            fds = new int[] {0};
                        }
                        case SET_VRING_NUM -> b.putInt(idx).putInt(RING_SIZE);
                        case SET_VRING_ENABLE -> b.putInt(idx).putInt(1);
                        default -> b.putInt(idx).putInt(0);
                    }
                    return new Msg(r.id, fl, b.array(), fds);
                });
        Arbitrary<List<Msg>> random = Arbitraries.frequencyOf(net.jqwik.api.Tuple.of(5, structured),
                net.jqwik.api.Tuple.of(1, table), net.jqwik.api.Tuple.of(4, ring)).list().ofMinSize(1).ofMaxSize(40);
        // Half the sequences start from a session with memory and rings 0 and 1 running, to reach the deep states.
        return Combinators.combine(Arbitraries.of(true, false), random).as((setUp, rest) -> {
            if (!setUp) {
                return rest;
            }
            List<Msg> l = new ArrayList<>(runningRings());
            l.addAll(rest);
            return l;
        });
    }

    private static List<Msg> runningRings() {
        int f = RawPeer.V1 | RawPeer.NEED_REPLY;
        List<Msg> l = new ArrayList<>();
        ByteBuffer t = ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN);
        t.putInt(1).putInt(0).putLong(GPA_BASE).putLong(RAM_SIZE).putLong(UVA_BASE).putLong(0);
        l.add(new Msg(Request.SET_MEM_TABLE.id, f, t.array(), new int[] {1}));
        for (int i = 0; i < 2; i++) {
            l.add(new Msg(Request.SET_VRING_NUM.id, f, RawPeer.state(i, RING_SIZE), new int[0]));
            l.add(new Msg(Request.SET_VRING_ADDR.id, f, RawPeer.vringAddr(i, 0, UVA_DESC, UVA_USED, UVA_AVAIL, 0), new int[0]));
            l.add(new Msg(Request.SET_VRING_CALL.id, f, RawPeer.u64(i), new int[] {0}));
            l.add(new Msg(Request.SET_VRING_KICK.id, f, RawPeer.u64(i), new int[] {0}));
            l.add(new Msg(Request.SET_VRING_ENABLE.id, f, RawPeer.state(i, 1), new int[0]));
        }
        return l;
    }

    private LogCapture log;
    private Leaks baseline;

    @BeforeProperty
    void warmUp() throws Exception {
        log = new LogCapture().quiet();
        // One clean run first, so lazily loaded classes and opened files are in the baseline.
        check(List.of(new Msg(Request.GET_FEATURES.id, RawPeer.V1, new byte[0], new int[0])));
        baseline = Leaks.now();
    }

    @AfterProperty
    void done() throws Exception {
        Leaks after = Leaks.settleTo(baseline, 3000);
        assertThat(after.fds()).as("descriptors, before:%n%s%nafter:%n%s", baseline.describe(), after.describe())
                .isEqualTo(baseline.fds());
        assertThat(after.memfdMaps()).as("memfd mappings:%n%s", after.describe()).isEqualTo(baseline.memfdMaps());
        log.close();
    }

    @Property(tries = 400, edgeCases = net.jqwik.api.EdgeCasesMode.NONE)
    void anySequenceOfMessagesIsHandledCleanly(@ForAll("sequences") List<Msg> msgs) throws Exception {
        check(msgs);
    }

    private void check(List<Msg> msgs) throws Exception {
        log.clear();
        RecordingDevice dev = new RecordingDevice(2);
        AtomicReference<Throwable> escaped = new AtomicReference<>();
        Thread t;
        try (UnixSocket.Pair pair = UnixSocket.pair(); GuestRam ram = new GuestRam("mqv-fuzz", RAM_SIZE);
             EventFd efd = EventFd.create(); UnixSocket.Pair other = UnixSocket.pair()) {
            BackendSession session = new BackendSession("fuzz", new Channel(pair.second()), dev);
            t = Thread.ofPlatform().name("fuzz-session").start(() -> {
                try {
                    session.run();
                } catch (Throwable e) {
                    escaped.set(e);
                }
            });
            try (RawPeer fe = RawPeer.over(pair.first())) {
                BackendHarness.negotiate(fe, BackendHarness.ALL_PF);
                GuestRam.RingAt r = ram.ring(0, RING_SIZE);
                for (Msg m : msgs) {
                    int[] fds = new int[m.fdKinds().length];
                    for (int i = 0; i < fds.length; i++) {
                        fds[i] = switch (m.fdKinds()[i]) {
                            case 0 -> efd.fd();
                            case 1 -> ram.fd();
                            default -> other.first().fd();
                        };
                    }
                    byte[] p = resolve(m.payload(), ram, r);
                    try {
                        fe.sendRaw(RawPeer.frame(m.request(), m.flags(), p.length, p), fds);
                    } catch (io.mqvirtio.linux.ErrnoException closed) {
                        break; // the session closed the connection: a clear answer
                    }
                }
                try {
                    fe.send(Request.GET_QUEUE_NUM, new byte[0]);
                } catch (io.mqvirtio.linux.ErrnoException closed) {
                    // closed already
                }
                boolean open = readUntilSentinelOrClosed(fe);
                net.jqwik.api.statistics.Statistics.label("connection").collect(open ? "served to the end" : "closed by the backend");

            } finally {
                try {
                    pair.second().shutdown(); // wakes the session if it still reads
                } catch (RuntimeException alreadyClosed) {
                    // the session ended and closed its end
                }
            }
            t.join(10_000);
            assertThat(t.isAlive()).as("the session ends when the frontend goes").isFalse();
        }
        assertThat(escaped.get()).as("nothing escapes the session").isNull();
        assertThat(log.lines()).as("no failure inside the backend").noneMatch(l -> l.startsWith("SEVERE"));
        assertThat(dev.running()).isZero();
        assertThat(dev.calls()).endsWith("reset");
        net.jqwik.api.statistics.Statistics.label("rings").collect(
                dev.calls().stream().anyMatch(c -> c.startsWith("start")) ? "a ring started" : "no ring started");
    }

    /** True if the sentinel's reply came, false if the backend closed the connection first. */
    private static boolean readUntilSentinelOrClosed(RawPeer fe) {
        while (true) {
            RawPeer.Reply r;
            try {
                r = fe.read(5000);
            } catch (RawPeer.Closed closed) {
                return false;
            }
            assertThat(r.flags()).as("flags of %s", r).isEqualTo(RawPeer.V1 | RawPeer.REPLY);
            if (r.request() == Request.GET_QUEUE_NUM.id) {
                assertThat(r.u64()).isEqualTo(2);
                return true;
            }
            Request q = Request.of(r.request());
            if (q == null || !q.alwaysReplies) {
                assertThat(r.payload()).as("an ack of %s", r).hasSize(8);
                assertThat(r.u64()).as("ack value").isBetween(0L, 1L);
            }
        }
    }

    /** Replaces the markers with the frontend's real addresses. */
    private static byte[] resolve(byte[] p, GuestRam ram, GuestRam.RingAt r) {
        ByteBuffer b = ByteBuffer.wrap(p.clone()).order(ByteOrder.LITTLE_ENDIAN);
        for (int at = 0; at + 8 <= p.length; at += 8) {
            long v = b.getLong(at);
            long real = v == UVA_BASE ? ram.uva(0) : v == UVA_DESC ? ram.uva(r.descOff()) : v == UVA_AVAIL ? ram.uva(r.availOff())
                    : v == UVA_USED ? ram.uva(r.usedOff()) : v == UVA_END ? ram.uva(RAM_SIZE) : v == UVA_MISALIGNED ? ram.uva(r.descOff()) + 1 : v;
            b.putLong(at, real);
        }
        return b.array();
    }
}

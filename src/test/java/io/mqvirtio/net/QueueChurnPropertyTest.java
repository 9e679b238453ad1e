package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.DESC_F_WRITE;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentLinkedQueue;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A guest (through its frontend) that enables and disables the two rings of a pair at random, each on its own, while
 * both directions carry frames, against a model of what must happen. After each SET_VRING_ENABLE is acknowledged
 * (the worker applied it): the port is active exactly while either ring is enabled; a disabled RX ring gets nothing
 * (its used index stays); every TX chain is used exactly once, and its frame reaches the port at most once, in
 * order, never when the ring was disabled from before it was offered until it was used, always when the ring was
 * enabled all that time; frames the port holds for a disabled RX ring wait and arrive, all of them, in order, once it
 * is enabled again; counters add up. With a port that sends frame by frame and one that queues a burst's frames and
 * flushes them (as TAP TX through io_uring does). Seeded: a failure names its seed.
 */
@Timeout(60)
class QueueChurnPropertyTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final int SIZE = 64, STEPS = 3000;

    @TempDir
    Path dir;

    /** One pair's port: frames carry a sequence number after the header; it records what it sent and its state. */
    static final class ChurnPort extends OnePortBackend {
        final boolean batching;
        final ConcurrentLinkedQueue<byte[]> frames = new ConcurrentLinkedQueue<>();
        final ConcurrentLinkedQueue<Integer> sent = new ConcurrentLinkedQueue<>();
        final List<Integer> queued = new ArrayList<>(); // worker thread only
        volatile boolean active;
        volatile int sameStateCalls;

        ChurnPort(boolean batching) {
            super("churn");
            this.batching = batching;
        }

        @Override
        public Port open(int pair) {
            return new Port() {
                @Override
                public int readFd() {
                    return POLL;
                }

                @Override
                public long send(IoVec frame) {
                    sent.add(SequencePort.seq(frame));
                    return frame.totalBytes();
                }

                @Override
                public int batch() {
                    return batching ? 8 : 0;
                }

                @Override
                public boolean queue(IoVec frame) {
                    if (!batching || queued.size() == 8) {
                        return false;
                    }
                    queued.add(SequencePort.seq(frame));
                    return true;
                }

                @Override
                public int flush(long[] results) {
                    int n = queued.size();
                    for (int i = 0; i < n; i++) {
                        sent.add(queued.get(i));
                        results[i] = 100;
                    }
                    queued.clear();
                    return n;
                }

                @Override
                public long receive(IoVec into) {
                    return receiveFrom(frames, into);
                }

                @Override
                public void setActive(boolean on) {
                    if (on == active) {
                        sameStateCalls++;
                    }
                    active = on;
                }

                @Override
                public void close() {}
            };
        }
    }

    /** What the model knows of one TX frame in flight. */
    record Offered(int seq, int slot, boolean enabledAtOffer, int disablesAtOffer, int enablesAtOffer) {}

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void randomEnablesAgainstAModel(boolean batching) throws Exception {
        long base = Long.getLong("churn.seed", System.nanoTime());
        for (int run = 0; run < 3; run++) {
            long seed = base + run;
            try {
                session(seed, batching);
            } catch (AssertionError | Exception e) {
                throw new AssertionError("seed " + seed + " (-Dchurn.seed=" + seed + "): " + e.getMessage(), e);
            }
        }
    }

    private void session(long seed, boolean batching) throws Exception {
        Random r = new Random(seed);
        ChurnPort port = new ChurnPort(batching);
        Path sock = dir.resolve("churn-" + seed + "-" + batching + ".sock");
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("churn", 1), port);
             VhostUserServer server = VhostUserServer.listen(sock, dev);
             EvilDriver d = new EvilDriver(server.path(), 1, SIZE, FEATURES, 1 << 21)) {
            EvilDriver.Ring rx = d.rx(0), tx = d.tx(0);
            long[] rxBuf = new long[SIZE];
            long[] txBuf = new long[SIZE];
            for (int i = 0; i < SIZE; i++) {
                rxBuf[i] = d.alloc(2048);
                txBuf[i] = d.alloc(128);
            }
            boolean rxOn = true, txOn = true;
            int disables = 0, enables = 0;
            Offered[] inFlight = new Offered[SIZE];
            List<Integer> freeTx = new ArrayList<>();
            for (int i = 0; i < SIZE; i++) {
                freeTx.add(i);
            }
            int rxPosted = 0; // RX descriptors offered, in order 0..SIZE-1 round and round
            int rxUsedSeen = 0;
            int nextTx = 0, nextRx = 0, expectRx = 0;
            List<Integer> mustSend = new ArrayList<>();
            List<Integer> mustNotSend = new ArrayList<>();
            int txUsed = 0;
            int frozenRxUsed = -1;
            for (int step = 0; step < STEPS; step++) {
                int a = r.nextInt(100);
                if (a < 30 && !freeTx.isEmpty()) {
                    int slot = freeTx.remove(r.nextInt(freeTx.size()));
                    long off = txBuf[slot];
                    d.mem.asSlice(off, 12).fill((byte) 0);
                    d.mem.set(LE32, off + 12, nextTx);
                    tx.desc(slot, d.gpa(off), 12 + 60, 0, 0);
                    inFlight[slot] = new Offered(nextTx++, slot, txOn, disables, enables);
                    tx.offer(slot);
                    tx.kick();
                } else if (a < 45) {
                    byte[] f = new byte[12 + 60];
                    MemorySegment.ofArray(f).set(LE32, 12, nextRx++);
                    port.frames.add(f);
                    rx.kick(); // a POLL port: the worker looks on its next round
                } else if (a < 60 && rxPosted - rxUsedSeen < SIZE) {
                    int slot = rxPosted % SIZE;
                    rx.desc(slot, d.gpa(rxBuf[slot]), 2048, DESC_F_WRITE, 0);
                    rx.offer(slot);
                    rxPosted++;
                    rx.kick();
                } else if (a < 70) {
                    txOn = !txOn;
                    d.fe.setVringEnable(1, txOn);
                    if (txOn) {
                        enables++;
                    } else {
                        disables++;
                    }
                } else if (a < 78) {
                    rxOn = !rxOn;
                    d.fe.setVringEnable(0, rxOn);
                    frozenRxUsed = rxOn ? -1 : rx.usedIdx();
                } else {
                    Thread.onSpinWait();
                }
                if (a >= 60 && a < 78) {
                    // acknowledged: the worker applied it
                    assertThat(port.active).as("step %d: port active while rx %s tx %s", step, rxOn, txOn)
                            .isEqualTo(rxOn || txOn);
                }
                if (!rxOn) {
                    assertThat(rx.usedIdx()).as("step %d: used entries in a disabled RX ring", step).isEqualTo(frozenRxUsed);
                }
                // reap TX
                int[] u;
                while ((u = tx.nextUsed()) != null) {
                    Offered o = inFlight[u[0]];
                    assertThat(o).as("step %d: TX used entry %d not in flight", step, u[0]).isNotNull();
                    inFlight[u[0]] = null;
                    freeTx.add(u[0]);
                    txUsed++;
                    if (!o.enabledAtOffer() && !txOn && o.enablesAtOffer() == enables) {
                        mustNotSend.add(o.seq());
                    }
                    if (o.enabledAtOffer() && txOn && o.disablesAtOffer() == disables) {
                        mustSend.add(o.seq());
                    }
                }
                // reap RX: in order, each once
                while ((u = rx.nextUsed()) != null) {
                    assertThat(u[0]).as("RX used id").isEqualTo(rxUsedSeen % SIZE);
                    rxUsedSeen++;
                    assertThat(d.mem.get(LE32, rxBuf[u[0]] + 12)).as("step %d: RX frame in order", step).isEqualTo(expectRx++);
                    assertThat(u[1]).isEqualTo(12 + 60);
                }
            }
            // Settle: both rings on, every TX chain used, every RX frame delivered.
            d.fe.setVringEnable(0, true);
            d.fe.setVringEnable(1, true);
            assertThat(port.active).isTrue();
            tx.kick();
            long deadline = System.nanoTime() + 5_000_000_000L;
            while ((freeTx.size() < SIZE || expectRx < nextRx) && System.nanoTime() < deadline) {
                int[] u;
                while ((u = tx.nextUsed()) != null) {
                    assertThat(inFlight[u[0]]).as("TX used entry %d not in flight", u[0]).isNotNull();
                    Offered o = inFlight[u[0]];
                    inFlight[u[0]] = null;
                    freeTx.add(u[0]);
                    txUsed++;
                    if (o.enabledAtOffer() && o.disablesAtOffer() == disables) {
                        mustSend.add(o.seq());
                    }
                }
                while ((u = rx.nextUsed()) != null) {
                    rxUsedSeen++;
                    assertThat(d.mem.get(LE32, rxBuf[u[0]] + 12)).as("RX frame in order").isEqualTo(expectRx++);
                }
                while (rxPosted - rxUsedSeen < SIZE) {
                    int slot = rxPosted % SIZE;
                    rx.desc(slot, d.gpa(rxBuf[slot]), 2048, DESC_F_WRITE, 0);
                    rx.offer(slot);
                    rxPosted++;
                }
                rx.kick();
                Thread.sleep(1);
            }
            assertThat(freeTx).as("every TX chain used").hasSize(SIZE);
            assertThat(expectRx).as("every RX frame the port held delivered").isEqualTo(nextRx);
            List<Integer> sent = new ArrayList<>(port.sent);
            assertThat(sent).as("sent once each, in order").isSorted().doesNotHaveDuplicates();
            assertThat(sent).as("frames of a ring enabled all the time they were in it").containsAll(mustSend);
            assertThat(sent).as("frames of a ring disabled all the time they were in it").doesNotContainAnyElementsOf(mustNotSend);
            assertThat(port.sameStateCalls).as("setActive without a change").isZero();
            QueueCounters.Snapshot txc = dev.counters().get(1), rxc = dev.counters().get(0);
            HostileDriverTest.await(() -> dev.counters().get(1).packets() + dev.counters().get(1).drops() == txUsed(d),
                    "TX counted");
            txc = dev.counters().get(1);
            assertThat(txc.packets()).as("TX packets").isEqualTo(sent.size());
            assertThat(txc.packets() + txc.drops()).as("TX packets and drops").isEqualTo(txUsed);
            assertThat(txc.errors()).isZero();
            assertThat(rxc.packets()).as("RX packets").isEqualTo(nextRx);
            assertThat(d.rx(0).err.drain() + d.tx(0).err.drain()).as("no ring broke").isZero();
        }
    }

    private static int txUsed(EvilDriver d) {
        return d.tx(0).usedIdx();
    }
}

package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/**
 * The ring contract, for every layout and option (split and packed, each with and without EVENT_IDX and
 * INDIRECT_DESC and IN_ORDER): the driver side and the device side run against each other over one memfd mapped twice, with random chain shapes
 * (direct and indirect, any mix of readable and writable buffers) and random interleavings of add, publish, pop,
 * push, publish-used and reap. Every chain the device pops must be exactly what the driver added, every used
 * entry must come back with the device's bytes, no descriptor may be lost, and no notification may be missed.
 */
class RingContractPropertyTest {

    record Shape(int[] outLens, int[] inLens, boolean indirect) {}

    record Scenario(boolean packed, int size, boolean eventIdx, boolean indirect, boolean inOrder, List<Shape> chains,
                    long seed) {}

    @Provide
    Arbitrary<Scenario> scenarios() {
        Arbitrary<int[]> lens = Arbitraries.integers().between(1, 600).array(int[].class).ofMaxSize(4);
        Arbitrary<Shape> shape = Combinators.combine(lens, lens, Arbitraries.of(true, false))
                .filter((o, i, ind) -> o.length + i.length > 0)
                .as(Shape::new);
        Arbitrary<int[]> layoutAndSize = Arbitraries.oneOf(
                Arbitraries.of(2, 4, 8, 16, 256).map(n -> new int[] {0, n}),          // split: powers of two
                Arbitraries.of(1, 2, 3, 5, 8, 16, 100, 256).map(n -> new int[] {1, n})); // packed: any size
        return Combinators.combine(layoutAndSize, Arbitraries.of(true, false), Arbitraries.of(true, false),
                        Arbitraries.of(true, false), shape.list().ofMinSize(1).ofMaxSize(120), Arbitraries.longs())
                .as((ls, e, i, o, c, seed) -> new Scenario(ls[0] == 1, ls[1], e, i, o, c, seed));
    }

    @Property(tries = 600)
    void driverAndDeviceAgree(@ForAll("scenarios") Scenario sc) {
        long features = (sc.eventIdx ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                | (sc.indirect ? VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) : 0)
                | (sc.packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                | (sc.inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        try (TwoViewMemory mem = new TwoViewMemory(4 << 20)) {
            TwoViewMemory.Ring ring = mem.ring(sc.size, features, sc.indirect ? 8 : 0);
            new Run(mem, ring, sc).go();
        }
    }

    /** One interleaving, chosen by the scenario's seed. */
    private static final class Run {
        final TwoViewMemory mem;
        final DriverRing drv;
        final DeviceRing dev;
        final Scenario sc;
        final Random rnd;
        final Map<Integer, Posted> inFlight = new HashMap<>();
        final ArrayDeque<Popped> poppedNotPushed = new ArrayDeque<>();
        final Map<Integer, Integer> pushedLen = new HashMap<>();
        int nextChain;
        int nextDescriptor = -1;
        Posted prepared;
        int completed;
        boolean deviceWantsKick;      // device enabled kicks and saw nothing pending
        boolean driverWantsInterrupt; // driver enabled interrupts and saw nothing pending
        int unpublishedPushes;

        record Posted(Shape shape, long[] gpa, int[] len, byte[][] data, boolean[] indirect) {}

        /** A chain the device popped: on its own ({@code chain}) or as chain {@code index} of a burst. */
        record Popped(int id, DescriptorChain chain, ChainBurst burst, int index) {}

        Run(TwoViewMemory mem, TwoViewMemory.Ring ring, Scenario sc) {
            this.mem = mem;
            this.drv = ring.driver();
            this.dev = ring.device();
            this.sc = sc;
            this.rnd = new Random(sc.seed);
        }

        void go() {
            int steps = 0;
            while (completed < sc.chains.size()) {
                assertThat(++steps).as("no progress").isLessThan(100_000);
                switch (rnd.nextInt(7)) {
                    case 6 -> deviceGiveBack();
                    case 0 -> driverAdd();
                    case 1 -> driverPublish();
                    case 2 -> devicePop();
                    case 3 -> devicePush();
                    case 4 -> devicePublish();
                    default -> driverReap();
                }
            }
            assertThat(drv.freeDescriptors()).isEqualTo(sc.size);
            assertThat(drv.inFlight()).isZero();
            assertThat(dev.available()).isZero();
        }

        /** One-buffer chains of one direction, next in the scenario, added with one addBurst. */
        boolean driverAddBurst() {
            int n = 0;
            boolean writable = false;
            while (nextChain + n < sc.chains.size() && n < 6) {
                Shape s = sc.chains.get(nextChain + n);
                if (s.outLens.length + s.inLens.length != 1 || (s.indirect && drv.supportsIndirect())
                        || (n > 0 && writable != (s.inLens.length == 1))) {
                    break;
                }
                writable = s.inLens.length == 1;
                n++;
            }
            if (n == 0) {
                return false;
            }
            Posted[] posts = new Posted[n];
            long[] gpa = new long[n + 1];
            int[] len = new int[n + 1];
            int[] ids = new int[n + 2];
            for (int i = 0; i < n; i++) {
                if (prepared == null) {
                    prepared = prepare(sc.chains.get(nextChain));
                }
                posts[i] = i == 0 ? prepared : prepare(sc.chains.get(nextChain + i));
                gpa[i] = posts[i].gpa[0];
                len[i] = posts[i].len[0];
            }
            int free = drv.freeDescriptors();
            int added = drv.addBurst(gpa, len, n, writable, ids);
            assertThat(added).as("a burst takes what the ring has room for").isEqualTo(Math.min(n, free));
            for (int i = 0; i < added; i++) {
                assertThat(inFlight).doesNotContainKey(ids[i]);
                if (!sc.packed && sc.inOrder) {
                    if (nextDescriptor >= 0) {
                        assertThat(ids[i]).as("descriptor taken in ring order").isEqualTo(nextDescriptor);
                    }
                    nextDescriptor = (ids[i] + 1) % sc.size;
                }
                posts[i].indirect[0] = false;
                inFlight.put(ids[i], posts[i]);
                nextChain++;
            }
            prepared = added < n ? posts[added] : null; // the first not taken is retried
            return true;
        }

        void driverAdd() {
            if (rnd.nextInt(3) == 0 && driverAddBurst()) {
                return;
            }
            for (int k = rnd.nextInt(4); k >= 0 && nextChain < sc.chains.size(); k--) {
                Shape s = sc.chains.get(nextChain);
                boolean indirect = s.indirect && drv.supportsIndirect() && s.outLens.length + s.inLens.length <= 8;
                if (!indirect && s.outLens.length + s.inLens.length > sc.size) {
                    nextChain++; // can never fit a ring this small as direct descriptors
                    completed++;
                    continue;
                }
                if (prepared == null) {
                    prepared = prepare(s);
                }
                long[] gpa = prepared.gpa;
                int[] len = prepared.len;
                int n = len.length;
                int head = indirect ? drv.addIndirect(gpa, len, s.outLens.length, s.inLens.length)
                        : drv.add(gpa, len, s.outLens.length, s.inLens.length);
                if (head < 0) {
                    assertThat(drv.freeDescriptors()).isLessThan(indirect ? 1 : n);
                    return;
                }
                assertThat(inFlight).doesNotContainKey(head);
                if (!sc.packed && sc.inOrder) {
                    // IN_ORDER (2.7.9): the driver takes descriptors in ring order
                    if (nextDescriptor >= 0) {
                        assertThat(head).as("descriptor taken in ring order").isEqualTo(nextDescriptor);
                    }
                    nextDescriptor = (head + (indirect ? 1 : n)) % sc.size;
                }
                prepared.indirect[0] = indirect;
                inFlight.put(head, prepared);
                prepared = null;
                nextChain++;
            }
        }

        /** Buffers for a chain, allocated once even if the ring is full and the add is retried. */
        Posted prepare(Shape s) {
            int n = s.outLens.length + s.inLens.length;
            long[] gpa = new long[n];
            int[] len = new int[n];
            byte[][] data = new byte[n][];
            for (int i = 0; i < n; i++) {
                len[i] = i < s.outLens.length ? s.outLens[i] : s.inLens[i - s.outLens.length];
                long off = mem.alloc(len[i], 1 + rnd.nextInt(8));
                gpa[i] = mem.gpa(off);
                data[i] = new byte[len[i]];
                rnd.nextBytes(data[i]);
                if (i < s.outLens.length) {
                    MemorySegment.copy(MemorySegment.ofArray(data[i]), 0, mem.driver(), off, len[i]);
                }
            }
            return new Posted(s, gpa, len, data, new boolean[1]);
        }

        void driverPublish() {
            drv.publish();
            boolean kick = drv.needsKick();
            if (deviceWantsKick && dev.available() > 0) {
                assertThat(kick).as("device asked for a kick and the driver published, so it must kick").isTrue();
            }
            if (kick) {
                deviceWantsKick = false;
            }
        }

        void devicePop() {
            if (rnd.nextInt(4) == 0 && !dev.enableKicks()) {
                deviceWantsKick = true;
                return;
            }
            dev.disableKicks();
            deviceWantsKick = false;
            burstLeft = null; // the driver may have added chains since
            for (int k = rnd.nextInt(5); k >= 0; k--) {
                if (rnd.nextBoolean() && popBurst()) {
                    continue;
                }
                DescriptorChain chain = new DescriptorChain(64);
                if (!dev.pop(chain)) {
                    return;
                }
                Posted p = inFlight.get(chain.id());
                assertThat(p).as("popped id %d was never added", chain.id()).isNotNull();
                assertThat(poppedNotPushed).noneMatch(c -> c.id() == chain.id());
                if (burstLeft != null && p.shape.outLens.length + p.shape.inLens.length == 1 && !p.indirect[0]) {
                    assertThat(p.shape.inLens.length == 1).as("a one-buffer chain the burst just left behind").isNotEqualTo(burstLeft);
                }
                burstLeft = null;
                Shape s = p.shape;
                assertThat(chain.readableCount()).isEqualTo(s.outLens.length);
                assertThat(chain.writableCount()).isEqualTo(s.inLens.length);
                for (int i = 0; i < chain.count(); i++) {
                    assertThat(chain.guestAddress(i)).isEqualTo(p.gpa[i]);
                    assertThat(chain.length(i)).isEqualTo(p.len[i]);
                    assertThat(chain.isWritable(i)).isEqualTo(i >= s.outLens.length);
                }
                byte[] all = new byte[(int) chain.readableBytes()];
                assertThat(chain.readFrom(0, MemorySegment.ofArray(all))).isEqualTo(all.length);
                int at = 0;
                for (int i = 0; i < s.outLens.length; i++) {
                    for (byte b : p.data[i]) {
                        assertThat(all[at++]).isEqualTo(b);
                    }
                }
                poppedNotPushed.add(new Popped(chain.id(), chain, null, 0));
            }
        }

        /** The direction a burst that stopped short was asked for, until the next pop: that chain is not of it. */
        Boolean burstLeft;

        /**
         * Pops a burst of one-buffer chains of a random direction: each must be exactly a one-buffer chain the driver
         * added, in that direction and not indirect, read through the host address the burst gives. False if the
         * burst took none (the caller pops one on its own, as the worker does).
         */
        boolean popBurst() {
            ChainBurst b = new ChainBurst();
            boolean writable = rnd.nextBoolean();
            int max = 1 + rnd.nextInt(8);
            int got = dev.popBurst(b, max, writable);
            assertThat(got).isEqualTo(b.count()).isBetween(0, max);
            for (int i = 0; i < got; i++) {
                int id = b.id(i);
                Posted p = inFlight.get(id);
                assertThat(p).as("burst popped id %d, never added", id).isNotNull();
                assertThat(poppedNotPushed).noneMatch(c -> c.id() == id);
                assertThat(p.indirect[0]).as("an indirect chain in a burst").isFalse();
                assertThat(p.shape.outLens.length).isEqualTo(writable ? 0 : 1);
                assertThat(p.shape.inLens.length).isEqualTo(writable ? 1 : 0);
                assertThat(b.guestAddress(i)).isEqualTo(p.gpa[0]);
                assertThat(b.length(i)).isEqualTo(p.len[0]);
                assertThat(b.hostAddress(i)).isEqualTo(mem.guest.hostAddress(p.gpa[0], p.len[0]));
                if (!writable) {
                    byte[] got1 = new byte[p.len[0]];
                    MemorySegment.copy(MemorySegment.NULL.reinterpret(Long.MAX_VALUE), b.hostAddress(i),
                            MemorySegment.ofArray(got1), 0, got1.length);
                    assertThat(got1).isEqualTo(p.data[0]);
                }
                poppedNotPushed.add(new Popped(id, null, b, i));
            }
            // what stopped it is not a one-buffer chain of that direction (pop takes it): checked if pop comes next
            burstLeft = got < max ? writable : null;
            return got > 0;
        }

        /** Gives back the most recently popped chains not completed: the next pops return them again. */
        void deviceGiveBack() {
            burstLeft = null;
            int k = Math.min(rnd.nextInt(3) + 1, poppedNotPushed.size());
            for (int i = 0; i < k; i++) {
                poppedNotPushed.pollLast();
            }
            dev.giveBack(k);
            // the device knows it has chains to pop again: it does not wait for a kick for them
            deviceWantsKick = deviceWantsKick && k == 0;
        }

        void devicePush() {
            for (int k = rnd.nextInt(4); k >= 0 && !poppedNotPushed.isEmpty(); k--) {
                Popped chain = poppedNotPushed.poll();
                int head = chain.id();
                Posted p = inFlight.get(head);
                int writable = 0;
                for (int l : p.shape.inLens) {
                    writable += l;
                }
                // With IN_ORDER a chain a used entry's batch skips was used whole (2.7.9): the driver gives it the
                // bytes it offered. So the device folds only chains with nothing to write into a batch: one it can
                // write to, completed with 0 bytes here at random, keeps its own entry and is reaped with 0.
                int n = writable == 0 ? 0 : rnd.nextInt(writable + 1);
                byte[] out = pattern(head, n);
                // write through the chain's own accessors: re-derive the writable part from the posted buffers
                int at = 0;
                for (int i = p.shape.outLens.length; i < p.len.length && at < n; i++) {
                    int c = Math.min(p.len[i], n - at);
                    MemorySegment.copy(MemorySegment.ofArray(out), at, mem.guest.gpa(p.gpa[i], c), 0, c);
                    at += c;
                }
                if (chain.chain() != null) {
                    dev.complete(chain.chain(), n);
                } else if (n == 0) {
                    // a run of the same burst's chains with nothing written, completed with one call
                    int run = 1;
                    while (!poppedNotPushed.isEmpty() && poppedNotPushed.peek().burst() == chain.burst()
                            && poppedNotPushed.peek().index() == chain.index() + run
                            && inFlight.get(poppedNotPushed.peek().id()).shape.inLens.length == 0 && rnd.nextBoolean()) {
                        Popped next = poppedNotPushed.poll();
                        pushedLen.put(next.id(), 0);
                        unpublishedPushes++;
                        run++;
                    }
                    dev.completeBurst(chain.burst(), chain.index(), run, 0);
                } else {
                    dev.completeBurst(chain.burst(), chain.index(), 1, n);
                }
                pushedLen.put(head, n);
                unpublishedPushes++;
            }
        }

        void devicePublish() {
            dev.publish();
            boolean notify = dev.needsNotification();
            if (driverWantsInterrupt && unpublishedPushes > 0) {
                assertThat(notify).as("driver asked for an interrupt and entries were published").isTrue();
            }
            unpublishedPushes = 0;
            if (notify) {
                driverWantsInterrupt = false;
            }
        }

        void driverReap() {
            if (rnd.nextInt(4) == 0 && !drv.enableInterrupts()) {
                driverWantsInterrupt = true;
                return;
            }
            drv.disableInterrupts();
            driverWantsInterrupt = false;
            int head;
            while ((head = drv.reap()) >= 0) {
                Posted p = inFlight.remove(head);
                assertThat(p).as("reaped head %d not in flight", head).isNotNull();
                int n = pushedLen.remove(head);
                assertThat(drv.reapedLength()).isEqualTo(n);
                byte[] want = pattern(head, n);
                int at = 0;
                for (int i = p.shape.outLens.length; i < p.len.length && at < n; i++) {
                    int c = Math.min(p.len[i], n - at);
                    for (int j = 0; j < c; j++) {
                        long off = p.gpa[i] - TwoViewMemory.GPA_BASE + j;
                        assertThat(mem.driver().get(ValueLayout.JAVA_BYTE, off)).isEqualTo(want[at + j]);
                    }
                    at += c;
                }
                completed++;
            }
        }

        static byte[] pattern(int head, int n) {
            byte[] b = new byte[n];
            for (int i = 0; i < n; i++) {
                b[i] = (byte) (head * 31 + i);
            }
            return b;
        }
    }
}

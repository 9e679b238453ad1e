package io.mqvirtio.virtio;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;
import static org.assertj.core.api.Assertions.fail;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Our driver's rings against a hostile device, for split (with and without IN_ORDER) and packed (likewise): random
 * adds, bursts and publishes on the driver's side; on the device's, rounds of used entries, each honest (a chain
 * made available and not used yet, any length; with IN_ORDER the last of a batch of the oldest, the entry where the
 * batch's first would have its own, a split used index moved on by the batch's size, and the chains before the last
 * used whole: reaped with the bytes they offered) or a lie: an id out
 * of range, one not in flight, one in flight twice, one the driver added but has not published yet, a used index
 * that jumps (split), a wrong wrap bit (packed), garbage in the event suppression fields. A model of the chains in
 * flight says what the driver must accept: it reaps exactly the honest entries (ids, lengths, batches), a wrong wrap
 * bit hides what follows without harm, and any lie breaks the ring (a {@link VirtqueueException}, nothing else)
 * before the driver returns it or stops short of it; a broken ring refuses everything after, a count of what is
 * pending included (the split ring counted on, from a used index it no longer checked against anything). Reaping never returns
 * more buffers than were published, so a device cannot keep a driver's reap loop going. Seeded: each failure names
 * its seed.
 */
@Timeout(60)
class DriverRingHostileDevicePropertyTest {
    private static final ValueLayout.OfShort U16 = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle U16_VH = U16.varHandle();
    /** Runs per combination: seeds 1 to RUNS (-Ddriver.ring.runs=... for a longer soak). */
    private static final int RUNS = Integer.getInteger("driver.ring.runs", 40);
    private static final int STEPS = 2000;

    @ParameterizedTest(name = "packed={0} inOrder={1}")
    @CsvSource({"false,false", "false,true", "true,false", "true,true"})
    void theDriverReapsWhatTheModelAcceptsAndBreaksOnEveryLie(boolean packed, boolean inOrder) {
        Set<String> seen = new TreeSet<>();
        for (long seed = 1; seed <= RUNS; seed++) {
            new Run(seed, packed, inOrder, seen).go();
        }
        // every lie was told where the driver must see it (and break), and where it must not (a packed one)
        for (Lie lie : Lie.values()) {
            if (lie != (packed ? Lie.INDEX_JUMP : Lie.WRONG_WRAP)) {
                assertThat(seen).as("lies told").contains(lie + (lie == Lie.WRONG_WRAP ? " unseen" : " seen"));
            }
        }
        if (packed) {
            assertThat(seen).as("lies told").contains(Lie.UNPUBLISHED + " unseen", Lie.OUT_OF_RANGE + " unseen");
        }
    }

    /** A chain as the model keeps it. */
    static final class Chain {
        final int id;
        final int slots;
        final int writable; // bytes its device-writable buffers offer: its length when a batch skips it (IN_ORDER)
        boolean published;
        boolean named;     // a used entry of this device round names it (or covers it, IN_ORDER)

        Chain(int id, int slots, int writable) {
            this.id = id;
            this.slots = slots;
            this.writable = writable;
        }
    }

    /** What the driver must return for one reap. */
    record Expect(int id, int len) {}

    /** Lies a device round may end with. */
    enum Lie { OUT_OF_RANGE, NOT_IN_FLIGHT, TWICE, UNPUBLISHED, INDEX_JUMP, WRONG_WRAP }

    private static final class Run {
        final long seed;
        final Random r;
        final boolean packed;
        final boolean inOrder;
        final int size;
        final String where;
        final Set<String> seen;
        final int lieOdds; // one write in lieOdds is a lie (0: none)
        final Map<Integer, Chain> inFlight = new HashMap<>();
        final ArrayDeque<Chain> order = new ArrayDeque<>(); // exposure order, oldest first
        int freeDescs;
        // the device's positions: split, its used index; packed, its ring position and wrap counter
        int devUsedIdx;
        int driverUsedIdx; // split: used entries the driver has reaped (its last_used), mod 2^16
        int devPos;
        boolean devWrap = true;
        long published;
        long reaped;

        Run(long seed, boolean packed, boolean inOrder, Set<String> seen) {
            this.seed = seed;
            this.seen = seen;
            this.r = new Random(seed * 4 + (packed ? 2 : 0) + (inOrder ? 1 : 0));
            this.packed = packed;
            this.inOrder = inOrder;
            int[] sizes = packed ? new int[] {1, 3, 5, 8, 16, 50} : new int[] {1, 2, 4, 8, 16, 64};
            this.size = sizes[r.nextInt(sizes.length)];
            this.freeDescs = size;
            this.lieOdds = new int[] {0, 100, 20, 5}[r.nextInt(4)];
            this.where = "seed " + seed + " (packed=" + packed + " inOrder=" + inOrder + " size=" + size + ")";
        }

        void go() {
            long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
                    | (r.nextBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                    | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0)
                    | (inOrder ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
            try (TwoViewMemory mem = new TwoViewMemory(1 << 20)) {
                TwoViewMemory.Ring ring = mem.ring(size, features, 0);
                long buf = mem.gpa(mem.alloc(4096, 64));
                for (int step = 0; step < STEPS; step++) {
                    int what = r.nextInt(10);
                    if (what < 3) {
                        add(ring.driver(), buf, step);
                    } else if (what < 5) {
                        ring.driver().publish();
                        for (Chain c : order) {
                            published += c.published ? 0 : 1;
                            c.published = true;
                        }
                    } else if (what == 5) {
                        scribbleEvents(mem.driver(), ring);
                        ring.driver().needsKick(); // a decision only, whatever the device wrote
                        if (r.nextBoolean()) {
                            ring.driver().enableInterrupts();
                        } else {
                            ring.driver().disableInterrupts();
                        }
                    } else if (!round(mem.driver(), ring, step)) {
                        return; // the ring broke, as the model said it must
                    }
                }
            }
        }

        /** A single add of 1 to 3 descriptors, or a burst of 1 to 8 one-descriptor chains; unpublished yet. */
        void add(DriverRing drv, long buf, int step) {
            int freeIds = size - inFlight.size();
            if (r.nextBoolean()) {
                int n = 1 + r.nextInt(3);
                int out = r.nextInt(n + 1);
                long[] addr = new long[n];
                int[] len = new int[n];
                for (int i = 0; i < n; i++) {
                    addr[i] = buf + 64L * i;
                    len[i] = 1 + r.nextInt(64);
                }
                int id = drv.add(addr, len, out, n - out);
                if (freeDescs < n || freeIds == 0) {
                    assertThat(id).as("%s step %d: an add without room", where, step).isEqualTo(-1);
                    return;
                }
                int writable = 0;
                for (int i = out; i < n; i++) {
                    writable += len[i];
                }
                taken(id, n, writable, step);
                return;
            }
            int n = 1 + r.nextInt(8);
            long[] addr = new long[n];
            int[] len = new int[n];
            int[] ids = new int[n];
            for (int i = 0; i < n; i++) {
                addr[i] = buf + 64L * i;
                len[i] = 1 + r.nextInt(64);
            }
            boolean writable = r.nextBoolean();
            int k = drv.addBurst(addr, len, n, writable, ids);
            assertThat(k).as("%s step %d: chains a burst added", where, step)
                    .isEqualTo(Math.min(n, packed ? Math.min(freeDescs, freeIds) : freeDescs));
            for (int i = 0; i < k; i++) {
                taken(ids[i], 1, writable ? len[i] : 0, step);
            }
        }

        void taken(int id, int slots, int writable, int step) {
            assertThat(id).as("%s step %d: a new chain's id", where, step).isBetween(0, size - 1);
            assertThat(inFlight).as("%s step %d: a new chain's id", where, step).doesNotContainKey(id);
            Chain c = new Chain(id, slots, writable);
            inFlight.put(id, c);
            order.add(c);
            freeDescs -= slots;
        }

        /** The device writes anything into the fields that only steer notifications. */
        void scribbleEvents(MemorySegment m, TwoViewMemory.Ring ring) {
            if (packed) {
                m.set(U32, ring.usedOff(), r.nextInt()); // the device's event suppression: off_wrap and flags
            } else {
                m.set(U16, ring.usedOff() + SplitRing.USED_FLAGS, (short) r.nextInt());
                m.set(U16, ring.usedOff() + SplitRing.availEventOffset(size), (short) r.nextInt());
            }
        }

        /** A used length: mostly small, sometimes any 32-bit value. */
        int length() {
            return r.nextInt(4) == 0 ? r.nextInt() : r.nextInt(5000);
        }

        /**
         * One device round (1 to 4 used entries, the last possibly a lie), then the driver reaps until it has
         * nothing more or breaks; checked against the model. Returns false once the ring is broken.
         */
        boolean round(MemorySegment m, TwoViewMemory.Ring ring, int step) {
            for (Chain c : order) {
                c.named = false;
            }
            List<Expect> expect = new ArrayList<>();
            List<Chain> used = new ArrayList<>();
            List<Chain> explicit = new ArrayList<>();
            Lie lie = null;
            boolean breaks = false;
            int writes = 1 + r.nextInt(4);
            for (int w = 0; w < writes; w++) {
                List<Chain> open = new ArrayList<>();
                for (Chain c : order) {
                    if (c.published && !c.named) {
                        open.add(c);
                    }
                }
                // (with the whole packed ring published and used, the next position is the first unreaped one:
                // a device may overwrite its own entries there, which this model does not follow)
                boolean wholeRingUsed = packed && open.isEmpty() && freeDescs == 0
                        && order.stream().allMatch(c -> c.published);
                if (lieOdds > 0 && r.nextInt(lieOdds) == 0 && !wholeRingUsed) {
                    lie = pickLie(explicit);
                    writeLie(m, ring, lie, explicit);
                    // a packed driver looks at the device's next position only while a published chain is in
                    // flight there: a lie anywhere else is invisible, and the driver's next chain overwrites it
                    breaks = lie != Lie.WRONG_WRAP && (!packed || !open.isEmpty());
                    seen.add(lie + (breaks ? " seen" : " unseen"));
                    break;
                }
                if (open.isEmpty()) {
                    break;
                }
                int len = length();
                int k = inOrder ? r.nextInt(Math.min(open.size(), 4)) : r.nextInt(open.size());
                Chain c = open.get(k);
                int slots = 0;
                if (inOrder) { // one entry for the batch of the oldest up to c
                    for (int i = 0; i <= k; i++) {
                        Chain b = open.get(i);
                        b.named = true;
                        used.add(b);
                        slots += b.slots;
                        expect.add(new Expect(b.id, i == k ? len : b.writable));
                    }
                } else {
                    c.named = true;
                    used.add(c);
                    slots = c.slots;
                    expect.add(new Expect(c.id, len));
                }
                explicit.add(c);
                writeUsed(m, ring, c.id, len, usedFlags(devWrap), slots, inOrder ? k + 1 : 1);
            }
            if (!packed && lie != Lie.INDEX_JUMP) {
                U16_VH.setRelease(m, ring.usedOff() + SplitRing.USED_IDX, (short) devUsedIdx);
            }
            return reap(ring.driver(), step, lie, breaks, expect, used);
        }

        Lie pickLie(List<Chain> explicit) {
            List<Lie> can = new ArrayList<>(List.of(Lie.OUT_OF_RANGE, packed ? Lie.WRONG_WRAP : Lie.INDEX_JUMP));
            if (inFlight.size() < size) {
                can.add(Lie.NOT_IN_FLIGHT);
            }
            if (!explicit.isEmpty()) {
                can.addAll(List.of(Lie.TWICE, Lie.TWICE));
            }
            if (order.stream().anyMatch(c -> !c.published)) {
                can.addAll(List.of(Lie.UNPUBLISHED, Lie.UNPUBLISHED));
            }
            return can.get(r.nextInt(can.size()));
        }

        void writeLie(MemorySegment m, TwoViewMemory.Ring ring, Lie lie, List<Chain> explicit) {
            int id = switch (lie) {
                case OUT_OF_RANGE -> packed ? size + r.nextInt(65536 - size)
                        : r.nextBoolean() ? size + r.nextInt(100_000) : -1 - r.nextInt(100_000);
                case NOT_IN_FLIGHT -> {
                    int i;
                    do {
                        i = r.nextInt(size);
                    } while (inFlight.containsKey(i));
                    yield i;
                }
                case TWICE -> explicit.get(r.nextInt(explicit.size())).id;
                case UNPUBLISHED -> order.stream().filter(c -> !c.published).toList().get(0).id;
                case INDEX_JUMP, WRONG_WRAP -> r.nextInt(size);
            };
            if (lie == Lie.INDEX_JUMP) { // more entries than a ring can hold chains, or an index gone backwards
                int to = (driverUsedIdx + size + 1 + r.nextInt(65535 - size)) & 0xffff;
                U16_VH.setRelease(m, ring.usedOff() + SplitRing.USED_IDX, (short) to);
                return;
            }
            writeUsed(m, ring, id, length(), usedFlags(lie == Lie.WRONG_WRAP ? !devWrap : devWrap), 0, 1);
        }

        static int usedFlags(boolean w) {
            return w ? PackedRing.F_AVAIL | PackedRing.F_USED : 0;
        }

        /**
         * One used entry for {@code chains} chains taking {@code skip} descriptors (split: in the used ring's next
         * slot, the used index moved on by the chains; packed: at the device's position, flags last).
         */
        void writeUsed(MemorySegment m, TwoViewMemory.Ring ring, int id, int len, int flags, int skip, int chains) {
            if (packed) {
                long b = ring.descOff() + (long) PackedRing.DESC_SIZE * devPos;
                m.set(U32, b + PackedRing.DESC_LEN, len);
                m.set(U16, b + PackedRing.DESC_ID, (short) id);
                U16_VH.setRelease(m, b + PackedRing.DESC_FLAGS, (short) flags);
                devPos += skip;
                if (devPos >= size) {
                    devPos -= size;
                    devWrap = !devWrap;
                }
            } else {
                long e = ring.usedOff() + SplitRing.USED_RING + 8L * (devUsedIdx & (size - 1));
                m.set(U32, e, id);
                m.set(U32, e + 4, len);
                devUsedIdx = (devUsedIdx + chains) & 0xffff;
            }
        }

        /** The driver reaps until it has nothing more or breaks: exactly {@code expect}, or a prefix and a break. */
        boolean reap(DriverRing drv, int step, Lie lie, boolean breaks, List<Expect> expect, List<Chain> used) {
            String at = where + " step " + step + " (lie " + lie + ", expected " + expect + ")";
            if (r.nextBoolean()) {
                try {
                    int n = drv.usedPending();
                    if (!breaks) {
                        assertThat(n).as("%s: used pending", at).isEqualTo(expect.size());
                    }
                } catch (VirtqueueException e) {
                    if (!breaks) {
                        throw new AssertionError(at + ": an honest round broke the ring", e);
                    }
                    return broken(drv, at);
                }
            }
            for (int i = 0; ; i++) {
                int id;
                try {
                    id = drv.reap();
                } catch (VirtqueueException e) {
                    if (!breaks) {
                        throw new AssertionError(at + ": an honest round broke the ring", e);
                    }
                    return broken(drv, at);
                }
                if (id < 0) {
                    if (breaks) {
                        fail(at + ": the lie did not break the ring; " + i + " reaped, then nothing");
                    }
                    assertThat(i).as("%s: reaped", at).isEqualTo(expect.size());
                    break;
                }
                if (i >= expect.size()) {
                    fail(at + ": reaped id " + id + ", which no honest entry returned");
                }
                assertThat(id).as("%s: reap %d", at, i).isEqualTo(expect.get(i).id());
                assertThat(drv.reapedLength()).as("%s: length of reap %d", at, i).isEqualTo(expect.get(i).len());
            }
            for (Chain c : used) {
                inFlight.remove(c.id);
                order.remove(c);
                freeDescs += c.slots;
            }
            reaped += used.size();
            driverUsedIdx = devUsedIdx;
            assertThat(drv.inFlight()).as("%s: chains in flight", at).isEqualTo(inFlight.size());
            assertThat(drv.freeDescriptors()).as("%s: free descriptors", at).isEqualTo(freeDescs);
            assertThat(reaped).as("%s: reaped, against published", at).isLessThanOrEqualTo(published);
            return true;
        }

        /** A broken ring says why and refuses everything after. */
        boolean broken(DriverRing drv, String at) {
            assertThat(drv.isBroken()).as("%s: broken", at).isTrue();
            assertThat(drv.brokenReason()).as("%s: why", at).isNotBlank();
            assertThatThrownBy(drv::reap).as(at).isInstanceOf(VirtqueueException.class);
            assertThatThrownBy(drv::usedPending).as(at).isInstanceOf(VirtqueueException.class);
            assertThatThrownBy(() -> drv.usedPending(1)).as(at).isInstanceOf(VirtqueueException.class);
            assertThatThrownBy(() -> drv.add(new long[] {0}, new int[] {1}, 1, 0)).as(at)
                    .isInstanceOf(VirtqueueException.class);
            return false;
        }
    }
}

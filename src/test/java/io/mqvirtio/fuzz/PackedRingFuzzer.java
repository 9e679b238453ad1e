package io.mqvirtio.fuzz;

import static io.mqvirtio.fuzz.RingFuzzer.*;
import static io.mqvirtio.virtio.PackedRing.*;

import com.code_intelligence.jazzer.api.FuzzedDataProvider;
import io.mqvirtio.virtio.ChainBurst;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.PackedRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * Fuzz target (c): the device side of a packed virtqueue ({@code PackedDeviceRing}, opened through {@link Rings}
 * as a session opens it, so the resume from the ring's USED bits runs too) fed whatever a hostile driver can write:
 * the descriptor ring (flags with right and wrong wrap bits, used bits of the driver's own, ids in and out of range,
 * chains without an end, indirect descriptors alone and inside chains), indirect tables and the driver's event
 * suppression structure, over the same three regions of guest memory as {@link RingFuzzer}.
 *
 * <p>The input is decoded into a ring (size 1..32768, any, not only powers of two; INDIRECT_DESC, EVENT_IDX and
 * IN_ORDER each on or off; a chain capacity; the frontend's base, anywhere with either wrap counter; the ring's
 * history before it, consistent with that base or not) and a script of operations: mostly pops, with gives-back,
 * completions and publishes, the driver rewriting descriptors between pops, read-ahead, the available count and the
 * notification calls mixed in.
 *
 * <p>Oracle: an independent model of the ring, by the rules of design.md ("Rings behind one interface", packed):
 * where the ring resumes; for every pop, the chain (start, buffer id, slots, every buffer as the safety oracle of
 * {@link RingFuzzer#checkBuffers} checks it) or the refusal, after which the ring is broken for good; after every
 * publish, the used descriptors' ids, lengths and flags as the spec's write order leaves them; the ring's base after
 * every step; what {@code available} counts; what the event structure says after each enable and disable, and
 * whether {@code enableKicks} reports work. Any other exception, any disagreement, or an input that runs past the
 * fuzzer's timeout is a finding.
 */
public final class PackedRingFuzzer {
    static final long DRIVER_EVENT_OFF = AVAIL_OFF, DEVICE_EVENT_OFF = USED_OFF;
    static final int[] SIZES = {1, 2, 3, 4, 5, 7, 16, 255, 256, 257, 1024, 32767, 32768};

    // per input
    static int size;
    static int capacity;
    static boolean indirectAllowed;
    static boolean eventIdx;
    static boolean inOrder;
    static int lastSize = PackedRing.MAX_SIZE;
    static final List<long[]> expected = new ArrayList<>();

    // the model's ring state
    static int refPos;
    static boolean refWrap;
    static long refTotal;       // descriptors consumed (minus those given back)
    static int seenPos;
    static boolean seenWrap;
    static long seenTotal;
    static int refUsed;
    static boolean refUsedWrap;
    static boolean[] refInFlight = new boolean[PackedRing.MAX_SIZE];
    /**
     * A pop of the model: where it started (with the totals before it), its id and slots; and its chain, or the burst
     * and index it was popped as ({@link #burst}).
     */
    /** A chain popped; {@code readsOnly}: it has no writable descriptor (IN_ORDER may fold it into a batch). */
    record Pop(int pos, boolean wrap, long total, int id, int slots, DescriptorChain chain, ChainBurst burst, int index,
               boolean readsOnly) {}
    static final List<Pop> pops = new ArrayList<>();          // popped and not completed, in pop order
    static final List<Pop> history = new ArrayList<>();       // every pop not given back, in pop order
    static final List<int[]> shadow = new ArrayList<>();      // completions not published: id, len, pos, wrap
    static final ArrayDeque<DescriptorChain> freeChains = new ArrayDeque<>();
    static int freeCapacity = -1;
    // what the walk found (set by reference)
    static int refId;
    static int refSlots;
    static boolean refIndirect;

    private PackedRingFuzzer() {}

    public static void fuzzerInitialize() {
        RingFuzzer.fuzzerInitialize();
    }

    public static void fuzzerTearDown() {
        RingFuzzer.fuzzerTearDown();
    }

    public static void fuzzerTestOneInput(FuzzedDataProvider d) {
        RingFuzzer.probes = 0; // the burst probes repeat for each input
        size = switch (d.consumeInt(0, 3)) {
            case 0 -> 1 << d.consumeInt(0, 15);
            case 1 -> d.consumeInt(1, 8);
            case 2 -> d.consumeInt(1, PackedRing.MAX_SIZE);
            default -> SIZES[d.consumeInt(0, SIZES.length - 1)];
        };
        long features = VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED)
                | (d.consumeBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC) : 0)
                | (d.consumeBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX) : 0)
                | (d.consumeBoolean() ? VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER) : 0);
        indirectAllowed = VirtioFeatures.has(features, VirtioFeatures.F_INDIRECT_DESC);
        eventIdx = VirtioFeatures.has(features, VirtioFeatures.F_EVENT_IDX);
        inOrder = VirtioFeatures.has(features, VirtioFeatures.F_IN_ORDER);
        capacity = d.consumeBoolean() ? CAPACITIES[d.consumeInt(0, CAPACITIES.length - 1)] : d.consumeInt(1, 1100);
        if (capacity != freeCapacity) {
            freeChains.clear();
            freeCapacity = capacity;
        }
        int basePos = d.consumeInt(0, size - 1);
        boolean baseWrap = d.consumeBoolean();

        // Clear what the last input's ring could have written (driver or device), then write this one's.
        drv.asSlice(A_FILE + DESC_OFF, descRingBytes(lastSize)).fill((byte) 0);
        drv.asSlice(A_FILE + DRIVER_EVENT_OFF, EVENT_BYTES).fill((byte) 0);
        drv.asSlice(A_FILE + DEVICE_EVENT_OFF, EVENT_BYTES).fill((byte) 0);
        lastSize = size;
        writeHistory(d, basePos, baseWrap);
        writeRun(d, basePos, baseWrap);
        writeIndirectAreas(d, (off, count) -> writeTable(d, off, count));
        drv.set(LE16, A_FILE + DRIVER_EVENT_OFF + EVENT_OFF_WRAP, d.consumeShort());
        drv.set(LE16, A_FILE + DRIVER_EVENT_OFF + EVENT_FLAGS, (short) (d.consumeBoolean() ? d.consumeInt(0, 3) : d.consumeShort()));

        // Open it as a session does; the model resumes on its own.
        RingBase base = new RingBase(basePos, baseWrap, d.consumeInt(0, size - 1), d.consumeBoolean());
        long uva = drv.address();
        DeviceRing q = Rings.device(guest, size, uva + A_FILE + DESC_OFF, uva + A_FILE + DRIVER_EVENT_OFF,
                uva + A_FILE + DEVICE_EVENT_OFF, features, base);
        resume(basePos, baseWrap);
        Arrays.fill(refInFlight, 0, size, false);
        pops.clear();
        history.clear();
        shadow.clear();
        checkBase(q, "the ring opened");

        try (Arena scratchArena = Arena.ofConfined()) {
            MemorySegment scratch = scratchArena.allocate(256);
            for (int op = 0; op < MAX_OPS; op++) {
                boolean more = d.remainingBytes() > 0;
                int kind = more ? d.consumeInt(0, 16) : 0;
                if (kind <= 8) {
                    if (!pop(q, scratch) && !more) {
                        break;
                    }
                    if (q.isBroken()) {
                        return;
                    }
                } else if (kind == 9) {
                    // only the last chains popped, none of them completed: the interface's contract
                    int trailing = 0;
                    while (trailing < history.size() && outstanding(history.get(history.size() - 1 - trailing))) {
                        trailing++;
                    }
                    int n = d.consumeInt(0, trailing);
                    q.giveBack(n);
                    for (int i = 0; i < n; i++) {
                        Pop p = history.remove(history.size() - 1);
                        pops.removeIf(x -> x == p);
                        refInFlight[p.id()] = false;
                        refPos = p.pos();
                        refWrap = p.wrap();
                        refTotal = p.total();
                        if (p.chain() != null) {
                            freeChains.push(p.chain());
                        }
                    }
                } else if (kind == 10) {
                    int n = d.consumeInt(1, 8);
                    for (int i = 0; i < n && !pops.isEmpty(); i++) {
                        // in order when IN_ORDER was negotiated (the device's promise), any order otherwise
                        Pop p = pops.remove(inOrder ? 0 : d.consumeInt(0, pops.size() - 1));
                        int len = d.consumeBoolean() ? 0 : d.consumeInt();
                        completeOne(q, p, len);
                    }
                    if (d.consumeBoolean()) {
                        publish(q);
                    }
                } else if (kind == 11) {
                    publish(q);
                } else if (kind == 12) {
                    // the driver writes a descriptor between two pops: near where the device reads, or anywhere
                    int k = d.consumeBoolean() ? d.consumeInt(0, 8) : d.consumeInt(0, size - 1);
                    int pos = (refPos + k) % size;
                    boolean wrap = refPos + k >= size ? !refWrap : refWrap;
                    writeDesc(d, A_FILE + DESC_OFF, pos, wrap);
                } else if (kind == 13) {
                    q.needsNotification();
                    drv.set(LE16, A_FILE + DRIVER_EVENT_OFF + EVENT_OFF_WRAP, d.consumeShort());
                    drv.set(LE16, A_FILE + DRIVER_EVENT_OFF + EVENT_FLAGS, (short) d.consumeInt(0, 3));
                } else if (kind == 14) {
                    kicks(q, d.consumeInt(0, 2));
                } else if (kind == 16) {
                    burst(q, d);
                } else {
                    int got;
                    try {
                        got = q.available();
                    } catch (VirtqueueException e) {
                        throw new FuzzFinding("available() threw on a ring that is not broken", e);
                    }
                    int n = countAvailable();
                    if (got != n) {
                        throw new FuzzFinding("available() = " + got + ", the model counts " + n);
                    }
                    q.readAhead(d.consumeInt(0, 2 * size));
                }
                checkBase(q, "operation " + kind);
            }
        }
    }

    private static boolean outstanding(Pop p) {
        for (Pop x : pops) {
            if (x == p) {
                return true;
            }
        }
        return false;
    }

    /** One pop and its check; returns whether a chain was popped. */
    private static boolean pop(DeviceRing q, MemorySegment scratch) {
        int start = refPos;
        boolean startWrap = refWrap;
        String refError = null;
        boolean refNone = !PackedRingFuzzer.isAvail(flagsAt(start), startWrap);
        if (!refNone) {
            refError = reference(start, startWrap);
        } else if (refTotal < seenTotal) {
            refError = "the descriptor at " + start + " was read and given back, and the driver took it back";
            refNone = false;
        }
        DescriptorChain chain = freeChains.isEmpty() ? new DescriptorChain(capacity) : freeChains.pop();
        int got = popAgainst(q, chain, refError, refNone, expected, "the chain at " + start + " (flags 0x"
                + Integer.toHexString(flagsAt(start)) + ", wrap " + startWrap + ")");
        if (got <= 0) {
            if (got == 0) {
                freeChains.push(chain);
            }
            return false;
        }
        if (chain.head() != start || chain.id() != refId || chain.slots() != refSlots
                || chain.isIndirect() != refIndirect) {
            throw new FuzzFinding("chain " + chain + " (start " + chain.head() + ", id " + chain.id() + ", slots "
                    + chain.slots() + ", indirect " + chain.isIndirect() + "); the model has start " + start + ", id "
                    + refId + ", slots " + refSlots + ", indirect " + refIndirect);
        }
        checkBuffers(chain, expected, capacity, scratch);
        boolean readsOnly = expected.stream().allMatch(e -> e[2] == 0);
        Pop popped = new Pop(start, startWrap, refTotal, refId, refSlots, chain, null, -1, readsOnly);
        consumed(popped);
        return true;
    }

    /** The model pops {@code p} (its id, its slots), and so reads on. */
    private static void consumed(Pop p) {
        int start = p.pos();
        boolean startWrap = p.wrap();
        pops.add(p);
        history.add(p);
        refInFlight[p.id()] = true;
        refTotal += p.slots();
        refPos = start + p.slots();
        refWrap = startWrap;
        if (refPos >= size) {
            refPos -= size;
            refWrap = !refWrap;
        }
        if (refTotal > seenTotal) {
            seenTotal = refTotal;
            seenPos = refPos;
            seenWrap = refWrap;
        }
    }

    /** Completes the outstanding pop {@code p} with {@code len} on the ring (as it was popped) and in the model. */
    private static void completeOne(DeviceRing q, Pop p, int len) {
        if (p.chain() != null) {
            q.complete(p.chain(), len);
            freeChains.push(p.chain());
        } else {
            q.completeBurst(p.burst(), p.index(), 1, len);
        }
        complete(p, len);
    }

    /**
     * A burst ({@link DeviceRing#popBurst}, any size, either direction) held against the model: every chain it takes
     * must be the chain the model's walk takes there, one buffer of that direction, not indirect (address, length, id,
     * and the host address of the region the harness finds), each popped as the model pops it (ids in flight after
     * it, the position); where it stops before its limit, the model's next chain must be one pop takes with another
     * shape or refuses ({@link ChainBurst#stoppedAtOther()}), or nothing available. Then a prefix of the burst is
     * completed with {@link DeviceRing#completeBurst} in runs (IN_ORDER: after the chains popped before it; a run's
     * length zero or not, a publish between runs or not), and the rest given back or left outstanding for later
     * completions one by one (which mix {@code complete} and {@code completeBurst} in one IN_ORDER batch).
     */
    private static void burst(DeviceRing q, FuzzedDataProvider d) {
        int max = d.consumeInt(1, 70);
        boolean writable = d.consumeBoolean();
        int limit = Math.min(Math.min(max, ChainBurst.MAX), size);
        ChainBurst b = new ChainBurst();
        int k;
        try {
            k = q.popBurst(b, max, writable);
        } catch (VirtqueueException e) {
            throw new FuzzFinding("popBurst threw on a ring that is not broken: " + e.getMessage(), e);
        }
        if (k != b.count() || k > limit || k < 0) {
            throw new FuzzFinding("popBurst of " + max + " took " + k + " (count " + b.count() + ", limit " + limit + ")");
        }
        if (q.isBroken()) {
            throw new FuzzFinding("popBurst broke the ring: " + q.brokenReason());
        }
        if (b.stoppedAtOther() && k == limit) {
            throw new FuzzFinding("popBurst took its limit " + limit + " and says it stopped before another chain");
        }
        Pop[] taken = new Pop[k];
        for (int i = 0; i < k; i++) {
            int start = refPos;
            boolean wrap = refWrap;
            String what = "chain " + i + " of a burst (" + (writable ? "writable" : "readable") + "), at " + start
                    + " wrap " + wrap;
            if (!isAvail(flagsAt(start), wrap)) {
                throw new FuzzFinding("popBurst took " + what + ", which the model has not available");
            }
            String refError = reference(start, wrap);
            if (refError != null) {
                throw new FuzzFinding("popBurst took " + what + " but the model says: " + refError);
            }
            if (refIndirect || refSlots != 1 || expected.size() != 1 || (expected.get(0)[2] != 0) != writable) {
                throw new FuzzFinding("popBurst took " + what + ", which the model walks as " + describe(expected)
                        + (refIndirect ? " (indirect)" : "") + " in " + refSlots + " slots");
            }
            long[] e = expected.get(0);
            long file = fileOffset(e[0], e[1]);
            if (b.guestAddress(i) != e[0] || Integer.toUnsignedLong(b.length(i)) != e[1] || b.id(i) != refId
                    || b.hostAddress(i) != dev.address() + file) {
                throw new FuzzFinding("popBurst took " + what + " as 0x" + Long.toHexString(b.guestAddress(i)) + "+"
                        + Integer.toUnsignedLong(b.length(i)) + " id " + b.id(i) + " at host 0x"
                        + Long.toHexString(b.hostAddress(i)) + "; the model has " + describe(expected) + " id " + refId
                        + " at host 0x" + Long.toHexString(dev.address() + file));
            }
            taken[i] = new Pop(start, wrap, refTotal, refId, 1, null, b, i, !writable);
            consumed(taken[i]);
        }
        if (k < limit) {
            boolean next = isAvail(flagsAt(refPos), refWrap);
            String refError = next ? reference(refPos, refWrap) : null;
            boolean sameShape = next && refError == null && !refIndirect && refSlots == 1 && expected.size() == 1
                    && (expected.get(0)[2] != 0) == writable;
            boolean takenBack = !next && refTotal < seenTotal; // read and given back before: pop breaks the ring there
            if (b.stoppedAtOther() != (next || takenBack) || sameShape) {
                throw new FuzzFinding("popBurst took " + k + " of " + limit + " and stopped " + (b.stoppedAtOther()
                        ? "before another chain" : "finding nothing") + " at " + refPos + " wrap " + refWrap
                        + "; the model has " + (!next ? "nothing available" : refError != null ? "a refusal: " + refError
                        : describe(expected) + (refIndirect ? " (indirect)" : "") + " in " + refSlots + " slots"));
            }
        }
        int complete = d.consumeInt(0, k);
        if (complete > 0 && inOrder) {
            while (pops.get(0) != taken[0]) { // in pop order: those popped before the burst first
                completeOne(q, pops.remove(0), d.consumeBoolean() ? 0 : d.consumeInt());
            }
        }
        for (int done = 0; done < complete; ) {
            int n = d.consumeInt(1, complete - done);
            int len = d.consumeBoolean() ? 0 : d.consumeInt();
            q.completeBurst(b, done, n, len);
            for (int i = done; i < done + n; i++) {
                pops.remove(taken[i]);
                complete(taken[i], len);
            }
            done += n;
            if (d.consumeBoolean()) {
                publish(q);
            }
        }
        if (complete < k && d.consumeBoolean()) {
            q.giveBack(k - complete); // the burst's last chains: the last popped, none completed
            for (int i = k - 1; i >= complete; i--) {
                Pop p = history.remove(history.size() - 1);
                if (p != taken[i]) {
                    throw new IllegalStateException("the harness's history does not end with the burst");
                }
                pops.remove(p);
                refInFlight[p.id()] = false;
                refPos = p.pos();
                refWrap = p.wrap();
                refTotal = p.total();
            }
        }
    }

    /**
     * The model's walk of the chain at {@code start}: fills {@link #expected}, {@link #refId}, {@link #refSlots} and
     * {@link #refIndirect} and returns null, or returns why the ring must break. Reads the driver's view of memory.
     */
    static String reference(int start, boolean wrap) {
        expected.clear();
        refIndirect = false;
        int pos = start;
        int n = 0;
        boolean writableSeen = false;
        long total = 0;
        int id;
        while (true) {
            long b = A_FILE + DESC_OFF + 16L * pos;
            long addr = drv.get(LE64, b);
            long len = Integer.toUnsignedLong(drv.get(LE32, b + 8));
            int did = Short.toUnsignedInt(drv.get(LE16, b + 12));
            int flags = Short.toUnsignedInt(drv.get(LE16, b + 14));
            n++;
            pos = pos + 1 == size ? 0 : pos + 1;
            if ((flags & F_INDIRECT) != 0) {
                if (n != 1 || (flags & F_NEXT) != 0) {
                    return "indirect descriptor inside a chain";
                }
                if (!indirectAllowed) {
                    return "indirect without INDIRECT_DESC";
                }
                if (len == 0 || len % 16 != 0 || len / 16 > capacity) {
                    return "bad indirect table length " + len;
                }
                long file = fileOffset(addr, len);
                if (file < 0) {
                    return "indirect table outside memory";
                }
                refIndirect = true;
                for (long e = 0; e < len; e += 16) {
                    long a = drv.get(LE64, file + e);
                    long l = Integer.toUnsignedLong(drv.get(LE32, file + e + 8));
                    boolean w = (drv.get(LE16, file + e + 14) & F_WRITE) != 0;
                    String why = buffer(expected, capacity, a, l, w, writableSeen, total);
                    if (why != null) {
                        return why + " (indirect)";
                    }
                    writableSeen |= w;
                    total += l;
                }
                id = did;
                break;
            }
            boolean w = (flags & F_WRITE) != 0;
            String why = buffer(expected, capacity, addr, len, w, writableSeen, total);
            if (why != null) {
                return why;
            }
            writableSeen |= w;
            total += len;
            if ((flags & F_NEXT) == 0) {
                id = did;
                break;
            }
            if (n == size) {
                return "chain longer than the ring";
            }
        }
        if (id >= size) {
            return "buffer id " + id + " out of range";
        }
        if (refInFlight[id]) {
            return "buffer id " + id + " in flight";
        }
        refId = id;
        refSlots = n;
        return null;
    }

    /**
     * Where the ring resumes, by the rule of design.md: the frontend's base when the ring reads as a clean stop there
     * ({@link #readsAsCleanStop}); else the first position whose USED bit differs from position 0's, with position 0's
     * bit as the wrap counter (0 and the opposite of every bit when all agree). The used position is the avail one.
     */
    private static void resume(int base, boolean wrap) {
        if (readsAsCleanStop(base, wrap)) {
            refPos = base;
            refWrap = wrap;
        } else {
            boolean first = used(0);
            int p = 0;
            while (p < size && used(p) == first) {
                p++;
            }
            refPos = p == size ? 0 : p;
            refWrap = p == size ? !first : first;
        }
        refTotal = 0;
        seenPos = refPos;
        seenWrap = refWrap;
        seenTotal = 0;
        refUsed = refPos;
        refUsedWrap = refWrap;
    }

    /**
     * A clean stop at {@code base}, as a pattern: the slots read back from it over one ring, each in the lap the
     * device last consumed it in, classed U (a used descriptor of that lap), T / M (a descriptor the driver made
     * available in that lap, without / with NEXT), P (one made available for the next lap) or X, must be chains, U
     * alone or T M* U (a chain's rest read back to its used descriptor), then either the rest of one chain that began
     * before the slots read (shorter than the ring) or P*.
     */
    static boolean readsAsCleanStop(int base, boolean wrap) {
        StringBuilder s = new StringBuilder(size);
        int p = base;
        boolean w = wrap;
        for (int k = 0; k < size; k++) {
            if (p == 0) {
                p = size;
                w = !w;
            }
            p--;
            int f = flagsAt(p);
            s.append((f & (F_AVAIL | F_USED)) == (w ? F_AVAIL | F_USED : 0) ? 'U'
                    : isAvail(f, w) ? ((f & F_NEXT) != 0 ? 'M' : 'T')
                    : isAvail(f, !w) ? 'P' : 'X');
        }
        // read as the pattern (U|TM*U)*(TM*|P*), in pieces (a regex's recursion overflows on long rings)
        String read = s.toString();
        int end = read.length();
        while (end > 0 && read.charAt(end - 1) == 'P') {
            end--;
        }
        String body = read.substring(0, end);
        int lastUsed = body.lastIndexOf('U');
        String open = body.substring(lastUsed + 1);
        if (!open.isEmpty() && (end < read.length() || !chainRest(open) || open.length() >= size)) {
            return false;
        }
        for (String piece : body.substring(0, lastUsed + 1).split("U", -1)) {
            if (!piece.isEmpty() && !chainRest(piece)) {
                return false;
            }
        }
        return true;
    }

    /** T M*: a chain's last descriptor, then those before it, read back. */
    private static boolean chainRest(String x) {
        return x.charAt(0) == 'T' && x.chars().skip(1).allMatch(c -> c == 'M');
    }

    private static boolean used(int pos) {
        return (flagsAt(pos) & F_USED) != 0;
    }

    private static int flagsAt(int pos) {
        return Short.toUnsignedInt(drv.get(LE16, A_FILE + DESC_OFF + 16L * pos + 14));
    }

    static boolean isAvail(int flags, boolean w) {
        return ((flags & F_AVAIL) != 0) == w && ((flags & F_USED) != 0) != w;
    }

    private static int countAvailable() {
        int n = 0;
        int pos = refPos;
        boolean wrap = refWrap;
        while (n < Math.min(64, size) && isAvail(flagsAt(pos), wrap)) {
            n++;
            if (++pos == size) {
                pos = 0;
                wrap = !wrap;
            }
        }
        return n;
    }

    /**
     * The model's completion: IN_ORDER runs of zero-length completions of chains with no writable descriptor share one
     * used descriptor (the last id; a chain a batch skips counts as fully written, so one that can be written to keeps
     * its own); a completion beyond the ring's size with none published publishes the ones kept first.
     */
    private static void complete(Pop p, int len) {
        refInFlight[p.id()] = false;
        boolean fold = len == 0 && p.readsOnly();
        if (inOrder && fold && !shadow.isEmpty() && shadow.get(shadow.size() - 1)[4] == 1) {
            shadow.get(shadow.size() - 1)[0] = p.id();
        } else {
            if (shadow.size() == size) {
                checkPublished(); // a completion more than the ring holds publishes those kept first
            }
            shadow.add(new int[] {p.id(), len, refUsed, refUsedWrap ? 1 : 0, fold ? 1 : 0});
        }
        refUsed += p.slots();
        if (refUsed >= size) {
            refUsed -= size;
            refUsedWrap = !refUsedWrap;
        }
    }

    /**
     * Publishes and checks the ring: ids and lengths are written in completion order, then the flags of every entry
     * but the first, then the first's (the spec's batch order); where two entries share a slot the later write wins.
     */
    private static void publish(DeviceRing q) {
        q.publish();
        checkPublished();
    }

    private static void checkPublished() {
        int n = shadow.size();
        if (n == 0) {
            return;
        }
        Map<Integer, long[]> want = new HashMap<>(); // pos -> id, len, flags
        for (int[] e : shadow) {
            long[] w = want.computeIfAbsent(e[2], k -> new long[] {-1, -1, -1});
            w[0] = e[0];
            w[1] = e[1];
        }
        for (int i = 1; i <= n; i++) {
            int[] e = shadow.get(i % n);
            boolean wrap = e[3] != 0;
            want.get(e[2])[2] = (wrap ? F_AVAIL | F_USED : 0) | (e[1] != 0 ? F_WRITE : 0);
        }
        for (var w : want.entrySet()) {
            long b = A_FILE + DESC_OFF + 16L * w.getKey();
            int id = Short.toUnsignedInt(drv.get(LE16, b + 12));
            int len = drv.get(LE32, b + 8);
            int flags = Short.toUnsignedInt(drv.get(LE16, b + 14));
            long[] v = w.getValue();
            if (id != v[0] || len != (int) v[1] || flags != v[2]) {
                throw new FuzzFinding("used descriptor at " + w.getKey() + ": id " + id + ", len " + len + ", flags 0x"
                        + Integer.toHexString(flags) + "; the model wrote id " + v[0] + ", len " + (int) v[1]
                        + ", flags 0x" + Long.toHexString(v[2]));
            }
        }
        shadow.clear();
    }

    /** Enable (0), enable for more (1) or disable (2) kicks, and check the device event structure and the answer. */
    private static void kicks(DeviceRing q, int which) {
        long ev = A_FILE + DEVICE_EVENT_OFF;
        if (which == 2) {
            q.disableKicks();
            if (drv.get(LE16, ev + EVENT_FLAGS) != EVENT_DISABLE) {
                throw new FuzzFinding("disableKicks left the device event flags at " + drv.get(LE16, ev + EVENT_FLAGS));
            }
            return;
        }
        boolean work = which == 0 ? q.enableKicks() : q.enableKicksForMore();
        int pos = which == 0 ? refPos : seenPos;
        boolean wrap = which == 0 ? refWrap : seenWrap;
        int flags = drv.get(LE16, ev + EVENT_FLAGS);
        int offWrap = Short.toUnsignedInt(drv.get(LE16, ev + EVENT_OFF_WRAP));
        if (eventIdx ? flags != EVENT_DESC || offWrap != (pos | (wrap ? 0x8000 : 0)) : flags != EVENT_ENABLE) {
            throw new FuzzFinding("enable kicks (" + which + ") wrote flags " + flags + ", off_wrap 0x"
                    + Integer.toHexString(offWrap) + "; the model's position is " + pos + " wrap " + wrap);
        }
        if (work != isAvail(flagsAt(pos), wrap)) {
            throw new FuzzFinding("enable kicks (" + which + ") reported work " + work + " at " + pos + " wrap " + wrap);
        }
    }

    private static void checkBase(DeviceRing q, String after) {
        RingBase b = q.base();
        if (b.avail() != refPos || b.availWrap() != refWrap || b.used() != refUsed || b.usedWrap() != refUsedWrap) {
            throw new FuzzFinding("after " + after + " the ring's base is " + b + "; the model has avail " + refPos
                    + " wrap " + refWrap + ", used " + refUsed + " wrap " + refUsedWrap);
        }
    }

    // ---- decoding the input into ring contents ----------------------------------------------------------------------

    /**
     * The ring before the base: consistent with it (positions before it consumed in this lap, USED = wrap; the rest
     * left from the last lap, USED = !wrap), or flags from a template with a bit pattern, or nothing (zeroes).
     */
    private static void writeHistory(FuzzedDataProvider d, int base, boolean wrap) {
        int mode = d.consumeInt(0, 3);
        if (mode == 3) {
            return;
        }
        long pattern = d.consumeLong();
        int raw = d.consumeShort() & 0xffff;
        for (int i = 0; i < size; i++) {
            boolean bit = (pattern >>> (i & 63) & 1) != 0;
            int flags;
            if (mode == 2) {
                flags = bit ? raw : raw ^ F_USED;
            } else if (i < base) {
                flags = bit ? usedFlags(wrap) : availFlags(!wrap); // used by the device, or offered for the next lap
            } else {
                flags = usedFlags(!wrap);
            }
            drv.set(LE16, A_FILE + DESC_OFF + 16L * i + 14, (short) flags);
        }
    }

    /** The run of descriptors the driver made available from the base on: some one by one, the rest from a template. */
    private static void writeRun(FuzzedDataProvider d, int base, boolean wrap) {
        int count = d.consumeInt(0, Math.min(size, TEMPLATE_MAX));
        int explicit = d.consumeInt(0, Math.min(count, 32));
        for (int i = 0; i < explicit; i++) {
            writeDesc(d, A_FILE + DESC_OFF, (base + i) % size, base + i >= size != wrap);
        }
        if (explicit == count) {
            return;
        }
        long addr = RingFuzzer.addr(d);
        int len = RingFuzzer.len(d);
        int low = d.consumeInt(0, 7);
        int chainLen = d.consumeBoolean() ? d.consumeInt(1, 4) : d.consumeInt(1, TEMPLATE_MAX + 1);
        int idMode = d.consumeInt(0, 3);
        int idBase = d.consumeInt(0, size);
        boolean rightBits = d.consumeInt(0, 7) != 0;
        int chainNo = 0;
        for (int i = explicit; i < count; i++) {
            int pos = (base + i) % size;
            boolean w = base + i >= size != wrap;
            boolean last = (i - explicit + 1) % chainLen == 0 || i == count - 1 && chainLen <= 4;
            int flags = (low & ~F_NEXT) | (last ? 0 : F_NEXT) | (rightBits ? availFlags(w) : availFlags(!w));
            int id = switch (idMode) {
                case 0 -> idBase;
                case 1 -> (idBase + chainNo) % Math.max(1, size);
                case 2 -> pos;
                default -> idBase + chainNo; // may run out of range
            };
            long b = A_FILE + DESC_OFF + 16L * pos;
            drv.set(LE64, b, addr);
            drv.set(LE32, b + 8, len);
            drv.set(LE16, b + 12, (short) id);
            drv.set(LE16, b + 14, (short) flags);
            if (last) {
                chainNo++;
            }
        }
    }

    /** One descriptor at ring position {@code i}, as the driver would write it for wrap counter {@code w}, or not. */
    private static void writeDesc(FuzzedDataProvider d, long off, int i, boolean w) {
        long b = off + 16L * i;
        if (d.consumeInt(0, 7) == 0) { // raw bytes
            drv.set(LE64, b, d.consumeLong());
            drv.set(LE64, b + 8, d.consumeLong());
            return;
        }
        drv.set(LE64, b, RingFuzzer.addr(d));
        drv.set(LE32, b + 8, RingFuzzer.len(d));
        drv.set(LE16, b + 12, (short) switch (d.consumeInt(0, 3)) {
            case 0 -> d.consumeShort();
            case 1 -> i;
            default -> d.consumeInt(0, size);
        });
        int low = d.consumeInt(0, 7) == 0 ? d.consumeShort() & 0x7f7f : d.consumeInt(0, 7);
        int bits = switch (d.consumeInt(0, 7)) {
            case 0 -> availFlags(!w);        // wrong wrap counter
            case 1 -> usedFlags(w);          // a used flag of the driver's own
            case 2 -> usedFlags(!w);
            default -> availFlags(w);
        };
        drv.set(LE16, b + 14, (short) (low | bits));
    }

    /** An indirect table of {@code count} entries at file offset {@code off}: only WRITE counts in it. */
    private static void writeTable(FuzzedDataProvider d, long off, int count) {
        int explicit = d.consumeInt(0, Math.min(count, 32));
        for (int i = 0; i < explicit; i++) {
            long b = off + 16L * i;
            drv.set(LE64, b, RingFuzzer.addr(d));
            drv.set(LE32, b + 8, RingFuzzer.len(d));
            drv.set(LE16, b + 12, d.consumeShort());
            drv.set(LE16, b + 14, (short) (d.consumeInt(0, 3) == 0 ? d.consumeShort() : d.consumeInt(0, 7)));
        }
        long addr = explicit < count ? RingFuzzer.addr(d) : 0;
        int len = explicit < count ? RingFuzzer.len(d) : 0;
        int flags = explicit < count ? d.consumeInt(0, 7) : 0;
        for (int i = explicit; i < count; i++) {
            long b = off + 16L * i;
            drv.set(LE64, b, addr);
            drv.set(LE32, b + 8, len);
            drv.set(LE16, b + 12, (short) 0);
            drv.set(LE16, b + 14, (short) flags);
        }
    }

    private static int availFlags(boolean w) {
        return w ? F_AVAIL : F_USED;
    }

    private static int usedFlags(boolean w) {
        return w ? F_AVAIL | F_USED : 0;
    }
}

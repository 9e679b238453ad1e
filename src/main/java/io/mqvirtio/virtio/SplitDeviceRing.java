package io.mqvirtio.virtio;

import static io.mqvirtio.virtio.SplitRing.*;

import io.mqvirtio.memory.DirtyLogCache;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.GuestMemoryException;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.memory.RegionCache;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;

/**
 * The device's side of one split virtqueue (VIRTIO 1.3, 2.7), the split layout of {@link DeviceRing}: pops descriptor
 * chains the driver made available,
 * pushes used entries, publishes the used index once per batch, and decides whether to notify the driver
 * (VIRTQ_AVAIL_F_NO_INTERRUPT or EVENT_IDX's {@code used_event}) and whether it wants kicks.
 *
 * <p>Everything the driver wrote is untrusted. Any violation (a descriptor loop, an index out of range, a nested or
 * malformed indirect table, a writable buffer before a readable one, a buffer outside guest memory, a chain whose
 * total length overflows 32 bits, an avail index that jumps by more than the queue size) throws a
 * {@link VirtqueueException} and leaves the queue {@linkplain #isBroken() broken}: it pops nothing more until it
 * is set up again. Each value is read from guest memory once, so a driver that changes a descriptor while we read
 * it gets no second, different look.
 *
 * <p>Single-threaded: one worker owns a queue.
 */
public final class SplitDeviceRing implements DeviceRing {
    /**
     * Descriptor fields are read without an alignment requirement. An indirect table is checked to be 16-byte
     * aligned as a guest-physical address, but where that lies in our mapping depends on the region's guest base,
     * which the frontend chooses: with a base that is not aligned like its mapping, aligned layouts made the JVM
     * throw IllegalArgumentException out of pop (found by fuzzing, docs/fuzzing.md). A plain load on x86 either way.
     */
    private static final ValueLayout.OfInt DESC_U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfShort DESC_U16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** readAhead touches a buffer's first lines only from this length on (shorter ones come with the descriptors). */
    private static final long READ_AHEAD_MIN_LEN = 256;

    private final GuestMemory memory;
    private final int size;
    private final int mask;
    private final MemorySegment desc;
    private final MemorySegment avail;
    private final MemorySegment used;
    private final boolean eventIdx;
    private final boolean indirectAllowed;
    private final boolean inOrder;
    private final long usedEventOff;
    private final long availEventOff;

    private int lastAvail;      // next avail ring slot to read (free-running 16-bit)
    @SuppressWarnings("unused")
    private long readAheadSink; // what readAhead loaded, kept so that the JIT keeps the loads
    private int availShadow;    // avail.idx as last read: pops up to it without touching the driver's cache line
    private int usedIdx;        // next used ring slot to write (free-running 16-bit), published by publishUsed
    private int publishedUsed;  // value last stored in used.idx
    /**
     * IN_ORDER: the used index of the open batch's first chain (where its one entry goes), or -1 with none open; the
     * batch's chains run from there to usedIdx, and batchHead is the last one's head (the entry names it).
     */
    private int batchAt = -1;
    private int batchHead;
    private int signalledUsed;  // used index at the last notification decision
    private boolean signalledValid;
    private String broken;
    /** Whether used->flags says NO_NOTIFY because we wrote it so: written once, not at every burst (see the packed ring's). */
    private boolean kicksOff;
    private final DirtyLogCache dirty = new DirtyLogCache();
    private final RegionCache regions;
    private long usedGpa = RingLog.NONE; // where the used ring's writes are logged, while logging

    /**
     * @param memory      the guest memory the descriptors' addresses refer to
     * @param size        the queue size (a power of two, at most 32768)
     * @param desc        the descriptor table, already translated (16 × size bytes)
     * @param avail       the available ring (6 + 2 × size bytes)
     * @param used        the used ring (6 + 8 × size bytes)
     * @param features    the negotiated features (EVENT_IDX and INDIRECT_DESC matter here)
     * @param lastAvail   where to resume reading the avail ring (vhost-user SET_VRING_BASE)
     * @param usedIdx     where to resume writing the used ring (normally the ring's current used.idx)
     */
    public SplitDeviceRing(GuestMemory memory, int size, MemorySegment desc, MemorySegment avail, MemorySegment used,
                       long features, int lastAvail, int usedIdx) {
        if (!isValidSize(size)) {
            throw new VirtqueueException("queue size " + size + " is not a power of two in 1.." + MAX_SIZE);
        }
        checkPart("descriptor table", desc, descTableBytes(size), 16);
        checkPart("available ring", avail, availBytes(size), 2);
        checkPart("used ring", used, usedBytes(size), 4);
        this.memory = memory;
        this.regions = new RegionCache(memory);
        this.size = size;
        this.mask = size - 1;
        this.desc = desc;
        this.avail = avail;
        this.used = used;
        this.eventIdx = VirtioFeatures.has(features, VirtioFeatures.F_EVENT_IDX);
        this.indirectAllowed = VirtioFeatures.has(features, VirtioFeatures.F_INDIRECT_DESC);
        this.inOrder = VirtioFeatures.has(features, VirtioFeatures.F_IN_ORDER);
        this.usedEventOff = usedEventOffset(size);
        this.availEventOff = availEventOffset(size);
        this.lastAvail = lastAvail & 0xffff;
        this.availShadow = this.lastAvail;
        this.usedIdx = usedIdx & 0xffff;
        this.publishedUsed = this.usedIdx;
    }

    @Override
    public int size() {
        return size;
    }

    /** The next avail index the device will read: what GET_VRING_BASE returns. */
    public int lastAvailIndex() {
        return lastAvail;
    }

    @Override
    public RingBase base() {
        return RingBase.split(lastAvail, usedIdx);
    }

    public int usedIndex() {
        return usedIdx;
    }

    @Override
    public boolean isBroken() {
        return broken != null;
    }

    /** Why the queue broke, or null. */
    @Override
    public String brokenReason() {
        return broken;
    }

    /**
     * Number of chains the driver has made available that the device has not popped yet (validated). While chains the
     * device read the index for are left, an index that jumped, or moved back among them, is not believed: they come
     * first, as {@link #pop} takes them, and the read after them (with none left) breaks the ring. So neither a burst
     * nor the worker's read-ahead breaks a ring earlier than chain-by-chain pops do; before, either threw those
     * chains away (TX frames never sent).
     */
    @Override
    public int available() {
        checkNotBroken();
        int have = (availShadow - lastAvail) & 0xffff;
        if (have != 0) {
            return more(have);
        }
        int idx = getU16Acquire(avail, AVAIL_IDX);
        int n = (idx - lastAvail) & 0xffff;
        if (n > size) {
            fail("avail index jumped from " + lastAvail + " to " + idx + ", more than the queue size " + size);
        }
        availShadow = idx;
        return n;
    }

    /**
     * Reads ahead, without consuming anything: for up to {@code max} chains the driver has made available and that
     * were not popped yet, loads their avail ring slot, their head descriptor and, when its buffer is 256 bytes or
     * longer, the buffer's first two cache lines, so that the cache misses of a whole burst overlap instead of coming
     * one after the other as each chain is popped and its frame read (the other CPU wrote all of them). Purely a
     * hint: nothing is validated or consumed here (that is {@link #pop}'s job), and a buffer is touched only where
     * it lies in guest memory; an avail index not yet read ({@link #available}) is not looked at.
     */
    @Override
    public void readAhead(int max) {
        long minLen = Experiment.SPLIT_READ_AHEAD_SHORT.on() ? 0 : READ_AHEAD_MIN_LEN;
        int n = Math.min(max, (availShadow - lastAvail) & 0xffff);
        if (n > size) {
            return; // pop reports it
        }
        long sum = 0;
        for (int i = 0; i < n; i++) {
            int head = getU16(avail, AVAIL_RING + 2L * ((lastAvail + i) & mask));
            if (head >= size) {
                return;
            }
            long base = (long) head * DESC_SIZE;
            long addr = desc.get(U64, base + DESC_ADDR);
            // A frame's first two lines, when the frame is long enough for that to pay (measured: no gain for
            // frames of a line or two, which come with the descriptors' lines anyway).
            if (Integer.toUnsignedLong(desc.get(DESC_U32, base + DESC_LEN)) >= minLen) {
                MemoryRegion r = memory.regionOfGpa(addr, 128);
                if (r != null) {
                    long off = addr - r.guestPhysAddr();
                    sum += r.segment().get(ValueLayout.JAVA_BYTE, off);
                    sum += r.segment().get(ValueLayout.JAVA_BYTE, off + 64);
                }
            }
        }
        readAheadSink = sum; // keeps the loads
    }

    /**
     * Pops the next available chain into {@code chain}. Returns false if none is available.
     *
     * @throws VirtqueueException if the driver broke the ring's rules (the queue is then broken)
     */
    @Override
    public boolean pop(DescriptorChain chain) {
        if (lastAvail == availShadow) {
            if (available() == 0) {
                return false;
            }
        } else {
            checkNotBroken();
        }
        int head = getU16(avail, AVAIL_RING + 2L * (lastAvail & mask));
        lastAvail = (lastAvail + 1) & 0xffff;
        if (head >= size) {
            fail("avail ring slot " + ((lastAvail - 1) & mask) + " names head " + head + ", queue size is " + size);
        }
        walk(head, chain);
        return true;
    }

    /**
     * Follows the chain at {@code head} into {@code chain}, checking every descriptor. Kept small enough for the JIT
     * to inline into {@link #pop}: the rare paths (an indirect table, every error with its message) are methods of
     * their own.
     */
    private void walk(int head, DescriptorChain chain) {
        chain.reset(head);
        MemorySegment table = desc;
        int tableSize = size;
        int idx = head;
        int seen = 0; // descriptors visited in the current table: more than its size means a loop
        boolean writableSeen = false;
        long total = 0;
        while (true) {
            if (++seen > tableSize) {
                throw loop(head, tableSize);
            }
            long base = (long) idx * DESC_SIZE;
            long addr = table.get(U64, base + DESC_ADDR);
            int len = table.get(DESC_U32, base + DESC_LEN);
            int flags = Short.toUnsignedInt(table.get(DESC_U16, base + DESC_FLAGS));
            int next = Short.toUnsignedInt(table.get(DESC_U16, base + DESC_NEXT));

            if ((flags & DESC_F_INDIRECT) != 0) {
                table = indirectTable(head, idx, seen, table != desc, flags, addr, len, chain);
                tableSize = (int) (Integer.toUnsignedLong(len) / DESC_SIZE);
                chain.markIndirect();
                idx = 0;
                seen = 0;
                continue;
            }
            boolean writable = (flags & DESC_F_WRITE) != 0;
            if (writable) {
                writableSeen = true;
            } else if (writableSeen) {
                throw readableAfterWritable(head, idx);
            }
            long ulen = Integer.toUnsignedLong(len);
            total += ulen;
            if (total > 0xffff_ffffL) {
                throw tooLong(head);
            }
            MemoryRegion region = memory.regionOfGpa(addr, ulen);
            if (region == null) {
                throw outside(head, idx, addr, ulen);
            }
            if (!chain.add(addr, region.segment(), addr - region.guestPhysAddr(), len, writable)) {
                throw tooManyBuffers(head, chain.capacity());
            }
            if ((flags & DESC_F_NEXT) == 0) {
                chain.identify(head, table == desc ? seen : 1); // an indirect chain takes one ring entry
                return;
            }
            if (next >= tableSize) {
                throw badNext(head, idx, next, tableSize);
            }
            idx = next;
        }
    }

    /**
     * One-buffer chains, read in one short loop: each avail slot, then its head descriptor's flags, address and length,
     * each once; the buffer's region is the last one's when it fits there ({@link RegionCache}). A chain's id is its
     * head. A chain this does not take (another shape, or one that breaks a rule: a head out of range, a buffer
     * outside guest memory) is left to {@link #pop}, which reads it afresh and breaks the ring with the reason.
     */
    @Override
    public int popBurst(ChainBurst burst, int max, boolean writable) {
        burst.count = 0;
        burst.stoppedAtOther = false;
        int have = (availShadow - lastAvail) & 0xffff;
        if (have < max) {
            have = available(); // the avail index once per burst that wants more than was seen
        } else {
            checkNotBroken();
        }
        int limit = Math.min(Math.min(max, ChainBurst.MAX), have);
        int want = writable ? DESC_F_WRITE : 0;
        MemorySegment table = desc;
        int last = lastAvail;
        int k = 0;
        boolean other = false;
        while (k < limit) {
            int head = getU16(avail, AVAIL_RING + 2L * (last & mask));
            if (head >= size) {
                other = true;
                break;
            }
            long base = (long) head * DESC_SIZE;
            int flags = Short.toUnsignedInt(table.get(DESC_U16, base + DESC_FLAGS));
            if ((flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE)) != want) {
                other = true;
                break;
            }
            long addr = table.get(U64, base + DESC_ADDR);
            int len = table.get(DESC_U32, base + DESC_LEN);
            long host = regions.hostAddress(addr, Integer.toUnsignedLong(len));
            if (host == 0) {
                other = true;
                break;
            }
            burst.add(k++, addr, host, len, head);
            last = (last + 1) & 0xffff;
        }
        lastAvail = last;
        burst.count = k;
        burst.stoppedAtOther = other;
        burst.writable = writable;
        return k;
    }

    /**
     * The avail index read again while {@code have} chains seen are not popped yet ({@link #available}): the new
     * count if the index moved on by at most the queue size from where the device stands, else {@code have}.
     */
    private int more(int have) {
        int idx = getU16Acquire(avail, AVAIL_IDX);
        int n = (idx - lastAvail) & 0xffff;
        if (n <= have || n > size) {
            return have;
        }
        availShadow = idx;
        return n;
    }

    /**
     * As {@link #complete} does chain by chain: with IN_ORDER a run of chains the device only read (a TX burst)
     * joins the open batch with one step; other chains get an entry each.
     */
    @Override
    public void completeBurst(ChainBurst burst, int from, int n, int len) {
        checkNotBroken();
        burst.checkRange(from, n);
        if (!inOrder || len != 0 || burst.writable) {
            for (int i = from; i < from + n; i++) {
                push(burst.id[i], len);
            }
            return;
        }
        int[] ids = burst.id;
        for (int i = from; i < from + n; i++) {
            checkHead(ids[i]);
        }
        if (n > 0) {
            batch(ids[from + n - 1], n);
        }
    }

    /** Checks an indirect descriptor (VIRTIO 1.3, 2.7.5.3.1) and returns its table. */
    private MemorySegment indirectTable(int head, int idx, int seen, boolean inIndirect, int flags, long addr, int len,
                                        DescriptorChain chain) {
        if (!indirectAllowed) {
            throw broken("indirect descriptor at head " + head + " but INDIRECT_DESC was not negotiated");
        }
        if (inIndirect) {
            throw broken("indirect table inside an indirect table at head " + head);
        }
        if (idx != head || seen != 1) {
            throw broken("indirect descriptor in the middle of the chain at head " + head);
        }
        if ((flags & DESC_F_NEXT) != 0) {
            throw broken("descriptor " + idx + " sets both INDIRECT and NEXT");
        }
        long tlen = Integer.toUnsignedLong(len);
        if (tlen == 0 || tlen % DESC_SIZE != 0) {
            throw broken("indirect table at head " + head + " has length " + tlen + ", not a non-zero multiple of 16");
        }
        if (tlen / DESC_SIZE > chain.capacity()) {
            throw broken("indirect table at head " + head + " has " + tlen / DESC_SIZE + " descriptors, more than "
                    + chain.capacity());
        }
        if ((addr & 0xf) != 0) {
            throw broken("indirect table at head " + head + " at 0x" + Long.toHexString(addr) + " is not 16-byte aligned");
        }
        try {
            return memory.gpa(addr, tlen);
        } catch (GuestMemoryException e) {
            throw broken("indirect table at head " + head + ": " + e.getMessage());
        }
    }

    private VirtqueueException loop(int head, int tableSize) {
        return broken("descriptor chain at head " + head + " loops or is longer than its table (" + tableSize + ")");
    }

    private VirtqueueException readableAfterWritable(int head, int idx) {
        return broken("readable descriptor " + idx + " after a writable one in the chain at head " + head);
    }

    private VirtqueueException tooLong(int head) {
        return broken("descriptor chain at head " + head + " is longer than 2^32-1 bytes");
    }

    private VirtqueueException outside(int head, int idx, long addr, long len) {
        return broken("descriptor " + idx + " of the chain at head " + head + " points outside guest memory: 0x"
                + Long.toHexString(addr) + "+" + len);
    }

    private VirtqueueException tooManyBuffers(int head, int capacity) {
        return broken("descriptor chain at head " + head + " has more than " + capacity + " buffers");
    }

    private VirtqueueException badNext(int head, int idx, int next, int tableSize) {
        return broken("descriptor " + idx + " of the chain at head " + head + " has next " + next + ", table size is "
                + tableSize);
    }

    /**
     * Gives back the last {@code n} chains popped and not pushed: the next pops return them again (a receive path
     * that took more buffers than the frame needed, or a send that would block).
     */
    @Override
    public void giveBack(int n) {
        if (n < 0 || n > size) {
            throw new IllegalArgumentException("cannot give back " + n + " chains");
        }
        lastAvail = (lastAvail - n) & 0xffff;
    }

    /**
     * With IN_ORDER (2.7.9), chains completed in a row with length 0 that have no writable descriptor (TX) become one
     * used entry naming the last of them, in the slot of the first, and the used index moves on by their number: the
     * driver takes the chains before the last as used whole, which for these is nothing written (DPDK's split
     * in-order driver, virtio_xmit_cleanup_inorder, frees as many chains as the index moved; Linux's and ours read
     * the entry's id). The entry is written when the batch ends (another completion, or {@link #publish}, before
     * the index; both logged while dirty logging). Chains with a length (RX) or with a writable descriptor keep an
     * entry each: a chain a batch skips counts as fully written. Measured with paired windows against an entry per
     * chain (docs/performance.md, medians of 5 to 11 rounds on a loaded machine): ours->ours 1.30x the rate at 64 B
     * and 1.22x at 1500 B, 0.75x and 0.78x the worker's CPU per frame; DPDK virtio-user into ours even (0.99x, CPU
     * 1.00x at 64 B; 1.05x, 0.94x at 1500 B). An older batching (c7bfdb6) moved the index by one per batch, which DPDK
     * rightly read as one chain: its TX ring stayed nearly full (0.015 Mpps).
     */
    @Override
    public void complete(DescriptorChain chain, int len) {
        if (inOrder && len == 0 && chain.writableCount() == 0) {
            checkNotBroken();
            checkHead(chain.head());
            batch(chain.head(), 1);
            return;
        }
        push(chain.head(), len);
    }

    /** Adds {@code n} chains, the last of them at {@code head}, to the open batch (opening one if none is). */
    private void batch(int head, int n) {
        if (batchAt < 0) {
            batchAt = usedIdx;
        } else if (((usedIdx - batchAt) & 0xffff) + n > size) {
            // a batch longer than the ring (chains offered again before their entry was visible) would move the index
            // by more than the ring holds: what is kept goes out first
            publish();
            batchAt = usedIdx;
        }
        batchHead = head;
        usedIdx = (usedIdx + n) & 0xffff;
    }

    /** Writes the open batch's one entry (naming its last chain, length 0) into the slot of its first chain. */
    private void endBatch() {
        if (batchAt >= 0) {
            long e = USED_RING + (long) USED_ELEM_SIZE * (batchAt & mask);
            used.set(U32, e, batchHead);
            used.set(U32, e + 4, 0);
            batchAt = -1;
            if (dirty.isLogging()) {
                logUsed(e, USED_ELEM_SIZE);
            }
        }
    }

    private void checkHead(int head) {
        if (head < 0 || head >= size) {
            throw new IllegalArgumentException("head " + head + " out of range for queue size " + size);
        }
    }

    /** Returns the chain that began at {@code head} to the driver, having written {@code len} bytes into it. */
    public void push(int head, int len) {
        checkNotBroken();
        checkHead(head);
        endBatch();
        long e = USED_RING + (long) USED_ELEM_SIZE * (usedIdx & mask);
        used.set(U32, e, head);
        used.set(U32, e + 4, len);
        usedIdx = (usedIdx + 1) & 0xffff;
        if (dirty.isLogging()) {
            logUsed(e, USED_ELEM_SIZE);
        }
    }

    /** Makes every pushed entry visible to the driver (one release store for the batch). */
    @Override
    public void publish() {
        endBatch();
        if (publishedUsed != usedIdx) {
            // The used index passes the last decision's (no decision was taken for 65,536 entries: the ring had no
            // call fd): vring_need_event's 16-bit distance would read a lap as nothing, so that decision is
            // forgotten and the next one notifies, as Linux's vhost_add_used_n does.
            if (((usedIdx - signalledUsed) & 0xffff) < ((usedIdx - publishedUsed) & 0xffff)) {
                signalledValid = false;
            }
            setU16Release(used, USED_IDX, usedIdx);
            publishedUsed = usedIdx;
            if (dirty.isLogging()) {
                logUsed(USED_IDX, 2);
            }
        }
        dirty.flush();
    }

    @Override
    public void discardUnpublished() {
        // what publish could not make visible (the ring's memory faulted) is not counted: the driver saw none of it
        batchAt = -1;
        usedIdx = publishedUsed;
    }

    @Override
    public void setLog(RingLog log) {
        dirty.setLog(log == null ? null : log.log());
        usedGpa = log == null ? RingLog.NONE : log.usedGpa();
    }

    @Override
    public void markWritten(long gpa, long len) {
        dirty.mark(gpa, len);
    }

    @Override
    public boolean isLogging() {
        return dirty.isLogging();
    }

    @Override
    public long pagesLogged() {
        return dirty.pagesLogged();
    }

    /** A write to the used ring at {@code off}, logged at the frontend's log address for it (if it gave one). */
    private void logUsed(long off, long len) {
        if (usedGpa != RingLog.NONE) {
            dirty.mark(usedGpa + off, len);
        }
    }

    /** A write to the used ring outside a burst (its flags, avail_event): logged and flushed at once. */
    private void setUsedU16(long off, int v) {
        setU16(used, off, v);
        if (dirty.isLogging()) {
            logUsed(off, 2);
            dirty.flush();
        }
    }

    /**
     * Whether the driver wants a notification for what was published since the last call (VIRTIO 1.3, 2.7.7.2):
     * with EVENT_IDX, when {@code used_event} was crossed; otherwise unless it set VIRTQ_AVAIL_F_NO_INTERRUPT.
     */
    @Override
    public boolean needsNotification() {
        // The used index store must be visible before we read the driver's wish (store-load ordering).
        VarHandle.fullFence();
        int old = signalledUsed;
        boolean valid = signalledValid;
        signalledUsed = publishedUsed;
        signalledValid = true;
        if (eventIdx) {
            int event = getU16(avail, usedEventOff);
            return !valid || needEvent(event, publishedUsed, old);
        }
        if (valid && publishedUsed == old) {
            return false;
        }
        return (getU16(avail, AVAIL_FLAGS) & AVAIL_F_NO_INTERRUPT) == 0;
    }

    /** Asks the driver not to kick (while the device is polling the ring anyway). */
    @Override
    public void disableKicks() {
        if (!eventIdx && !kicksOff) {
            setUsedU16(USED_FLAGS, USED_F_NO_NOTIFY);
            kicksOff = true;
        }
        // With EVENT_IDX, avail_event stays where it was: the driver kicks only when it passes it.
    }

    /**
     * Asks the driver to kick on the next chain it makes available. Returns true if chains arrived meanwhile (the
     * caller must then process them, or it could sleep with work pending).
     */
    @Override
    public boolean enableKicks() {
        kicksOff = false;
        if (eventIdx) {
            setUsedU16(availEventOff, lastAvail);
        } else {
            setUsedU16(USED_FLAGS, 0);
        }
        VarHandle.fullFence();
        return !isBroken() && getU16Acquire(avail, AVAIL_IDX) != lastAvail;
    }

    /**
     * Like {@link #enableKicks}, for a device waiting for more chains than those it has seen and given back
     * ({@link #unpop}): a receive path whose waiting frame needs more buffers than the ring holds now. The driver is
     * asked to kick on the next chain beyond those, and only such chains count as arrived: returning true for the
     * ones given back would have the caller spin on chains it cannot use.
     */
    @Override
    public boolean enableKicksForMore() {
        int seen = availShadow;
        kicksOff = false;
        if (eventIdx) {
            setUsedU16(availEventOff, seen); // the driver kicks when it makes chain `seen` available
        } else {
            setUsedU16(USED_FLAGS, 0);
        }
        VarHandle.fullFence();
        return !isBroken() && getU16Acquire(avail, AVAIL_IDX) != seen;
    }

    private void checkNotBroken() {
        if (broken != null) {
            throw new VirtqueueException("queue is broken: " + broken);
        }
    }

    private void fail(String why) {
        throw broken(why);
    }

    /** Marks the queue broken (DEVICE_NEEDS_RESET for this queue) and returns the exception to throw. */
    private VirtqueueException broken(String why) {
        broken = why;
        return new VirtqueueException(why);
    }
}

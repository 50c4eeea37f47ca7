/*
 * blkbench: a minimal fio-like load for the block benchmark (tools/bench/bench_blk.py),
 * built static (gcc -static) into the bench tools image by tools/guest/build-benchfs.sh.
 *
 * Usage: blkbench write|read|randread BLOCK_BYTES IODEPTH SECONDS DEVICE
 *
 * Opens DEVICE with O_DIRECT and keeps IODEPTH requests of BLOCK_BYTES in flight through
 * Linux native AIO (io_submit/io_getevents, called directly: no libaio) for SECONDS:
 *   write     sequential writes from offset 0, wrapping at the end of the device
 *   read      sequential reads, likewise
 *   randread  reads at block-aligned offsets from a fixed-seed xorshift generator, so every
 *             run (and every VMM) reads the same sequence
 * Time is CLOCK_MONOTONIC, from the first submission to the last completion (requests in
 * flight when time is up are waited for and counted). Prints one line:
 *   bytes=N ios=N usecs=N
 * Exit status 1, with a message on stderr, on any error or short transfer; 2 on bad usage.
 * The buffers hold a pseudo-random pattern, so writes are not all zeros.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "blkbench: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t xorshift64(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* What a request needs: the device, its size in blocks, one buffer per slot. */
struct job {
  aio_context_t ctx;
  int fd, writing, random;
  uint64_t bs, blocks, next, rng;
  char *buf;
  struct iocb *cbs;
};

/* Sets up request `slot` for the job's next offset and submits it. */
static void submit(struct job *j, int slot) {
  struct iocb *cb = &j->cbs[slot];
  uint64_t block = j->random ? xorshift64(&j->rng) % j->blocks : j->next++ % j->blocks;
  memset(cb, 0, sizeof *cb);
  cb->aio_data = (uint64_t)slot;
  cb->aio_lio_opcode = j->writing ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
  cb->aio_fildes = (uint32_t)j->fd;
  cb->aio_buf = (uint64_t)(uintptr_t)(j->buf + (uint64_t)slot * j->bs);
  cb->aio_nbytes = j->bs;
  cb->aio_offset = (int64_t)(block * j->bs);
  if (syscall(SYS_io_submit, j->ctx, 1, &cb) != 1) die("io_submit");
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: blkbench write|read|randread BLOCK_BYTES IODEPTH SECONDS DEVICE\n");
    return 2;
  }
  const char *mode = argv[1];
  int writing = strcmp(mode, "write") == 0, randomly = strcmp(mode, "randread") == 0;
  if (!writing && !randomly && strcmp(mode, "read") != 0) {
    fprintf(stderr, "blkbench: unknown mode %s\n", mode);
    return 2;
  }
  uint64_t bs = strtoull(argv[2], NULL, 0);
  int depth = atoi(argv[3]);
  uint64_t runtime_us = strtoull(argv[4], NULL, 0) * 1000000;
  if (bs == 0 || bs % 4096 != 0 || depth < 1 || depth > 256 || runtime_us == 0) {
    fprintf(stderr, "blkbench: need BLOCK_BYTES a multiple of 4096, IODEPTH 1-256, SECONDS > 0\n");
    return 2;
  }

  struct job j = {.writing = writing, .random = randomly, .bs = bs,
                  .rng = 0x2545f4914f6cdd1dull};
  j.fd = open(argv[5], (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
  if (j.fd < 0) die(argv[5]);
  uint64_t size;
  if (ioctl(j.fd, BLKGETSIZE64, &size) < 0) die("BLKGETSIZE64");
  j.blocks = size / bs;
  if (j.blocks < (uint64_t)depth) {
    fprintf(stderr, "blkbench: device of %llu bytes too small\n", (unsigned long long)size);
    return 1;
  }

  errno = posix_memalign((void **)&j.buf, 4096, bs * depth);
  if (errno) die("posix_memalign");
  uint64_t seed = 0x9e3779b97f4a7c15ull;
  for (uint64_t i = 0; i < bs * depth / 8; i++) ((uint64_t *)j.buf)[i] = xorshift64(&seed);

  if (syscall(SYS_io_setup, depth, &j.ctx) < 0) die("io_setup");
  j.cbs = calloc(depth, sizeof *j.cbs);
  struct io_event *events = calloc(depth, sizeof *events);
  if (!j.cbs || !events) die("calloc");

  uint64_t done_ios = 0, t0 = now_us(), t1 = t0;
  for (int i = 0; i < depth; i++) submit(&j, i);
  int inflight = depth, stopping = 0;
  while (inflight > 0) {
    long n = syscall(SYS_io_getevents, j.ctx, 1, depth, events, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("io_getevents");
    }
    t1 = now_us();
    stopping = stopping || t1 - t0 >= runtime_us;
    for (long i = 0; i < n; i++) {
      if (events[i].res != (int64_t)bs) {
        fprintf(stderr, "blkbench: %s of %llu bytes returned %lld\n", mode,
                (unsigned long long)bs, (long long)events[i].res);
        return 1;
      }
      done_ios++;
      if (stopping)
        inflight--;
      else
        submit(&j, (int)events[i].data);
    }
  }
  printf("bytes=%llu ios=%llu usecs=%llu\n", (unsigned long long)(done_ios * bs),
         (unsigned long long)done_ios, (unsigned long long)(t1 - t0));
  return 0;
}

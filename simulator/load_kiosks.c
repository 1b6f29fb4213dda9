/* Load kiosks for the ingest benchmarks: many MQTT connections publishing prepared drop-off
 * events at QoS 1, from one thread (libmosquitto without its network threads: one poll()
 * loop over every connection), so that a simulated kiosk costs a few microseconds of CPU
 * per event, far less than the gateway it loads. Started by simulator/kiosk_load.py.
 *
 *   load_kiosks HOST PORT WINDOW RATE_PER_KIOSK gateway|raw
 *
 * stdin, the plan (text): "kiosks N", then per kiosk "kiosk CLIENT_ID EVENT_TOPIC ACK_TOPIC
 * COUNT" and COUNT lines "EVENT_ID PAYLOAD" (compact JSON, no newline). Later "go" (every
 * worker is ready: start publishing) and "stop" (disconnect and report).
 * stdout: "ready" once every connection has its CONNACK (and, in gateway mode, the SUBACK of
 * its ack topic); "done" once every kiosk finished, or after 30 s without progress; after
 * "stop", per kiosk "result PUBLISHED ACKED FIRST_PUBLISH LAST_ACK N" and a line of N
 * latencies (publish to ack, seconds). Times are CLOCK_MONOTONIC seconds: Python's
 * time.perf_counter() on Linux.
 * gateway mode: a kiosk keeps at most WINDOW events unacknowledged by the gateway's
 * application acks (envelopes on its ack topic whose body.ids lists event ids), refilled
 * once half the window is free; an id acked twice counts once. raw mode: no application
 * acks; everything is published at once, libmosquitto keeping WINDOW in flight to the
 * broker, and ACKED counts the broker's PUBACKs.
 * With RATE_PER_KIOSK > 0, event n of a kiosk is due at start + n / RATE_PER_KIOSK.
 * Errors (connect failed, connection lost) go to stderr with a non-zero exit status.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <mosquitto.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STALL_S 30.0

struct kiosk {
	struct mosquitto *mosq;
	char *id, *topic, *ack_topic;
	int count;
	char **event_ids, **payloads;
	double *sent, *latency; /* latency < 0: not acked yet */
	int next;               /* events [lo, next) are in flight */
	int lo;
	int acked, ready;
	double first_publish, last_ack;
};

static struct kiosk *kiosks;
static int n_kiosks, window, gateway_mode;
static double rate;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const struct kiosk *k, const char *detail)
{
	fprintf(stderr, "load_kiosks: %s%s%s: %s\n", what, k ? " for " : "", k ? k->id : "",
		detail);
	exit(1);
}

static char *read_line(void)
{
	char *line = NULL;
	size_t size = 0;
	ssize_t len = getline(&line, &size, stdin);
	if (len <= 0)
		die("reading stdin", NULL, "unexpected end of input");
	if (line[len - 1] == '\n')
		line[len - 1] = '\0';
	return line;
}

static void read_plan(void)
{
	char *line = read_line();
	if (sscanf(line, "kiosks %d", &n_kiosks) != 1 || n_kiosks < 1)
		die("reading the plan", NULL, line);
	free(line);
	kiosks = calloc((size_t)n_kiosks, sizeof *kiosks);
	for (int i = 0; i < n_kiosks; i++) {
		struct kiosk *k = &kiosks[i];
		line = read_line();
		if (sscanf(line, "kiosk %ms %ms %ms %d", &k->id, &k->topic, &k->ack_topic, &k->count) !=
		    4)
			die("reading the plan", NULL, line);
		free(line);
		k->event_ids = calloc((size_t)k->count, sizeof(char *));
		k->payloads = calloc((size_t)k->count, sizeof(char *));
		k->sent = calloc((size_t)k->count, sizeof(double));
		k->latency = calloc((size_t)k->count, sizeof(double));
		for (int e = 0; e < k->count; e++) {
			char *event = read_line(); /* "EVENT_ID PAYLOAD": split in place */
			char *space = strchr(event, ' ');
			if (!space)
				die("reading the plan", k, event);
			*space = '\0';
			k->event_ids[e] = event;
			k->payloads[e] = space + 1;
			k->latency[e] = -1.0;
		}
	}
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
	struct kiosk *k = obj;
	if (rc != 0)
		die("connection refused", k, mosquitto_connack_string(rc));
	if (!gateway_mode) {
		k->ready = 1;
		return;
	}
	rc = mosquitto_subscribe(mosq, NULL, k->ack_topic, 1);
	if (rc != MOSQ_ERR_SUCCESS)
		die("subscribe", k, mosquitto_strerror(rc));
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *qos)
{
	(void)mosq, (void)mid, (void)n, (void)qos;
	((struct kiosk *)obj)->ready = 1;
}

/* The broker's PUBACK (raw mode: the only ack there is). */
static void on_publish(struct mosquitto *mosq, void *obj, int mid)
{
	struct kiosk *k = obj;
	(void)mosq, (void)mid;
	k->acked++;
	k->last_ack = now();
}

static void ack_one(struct kiosk *k, const char *id, size_t len, double t)
{
	/* Acks come mostly in order: search the in-flight range from its oldest event. */
	for (int e = k->lo; e < k->next; e++) {
		if (k->latency[e] < 0 && strncmp(k->event_ids[e], id, len) == 0 &&
		    k->event_ids[e][len] == '\0') {
			k->latency[e] = t - k->sent[e];
			k->acked++;
			break;
		}
	}
	while (k->lo < k->next && k->latency[k->lo] >= 0)
		k->lo++;
}

/* The gateway's application ack: {..."body":{..."ids":["id1","id2",...]}...}. */
static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
	struct kiosk *k = obj;
	double t = now();
	(void)mosq;
	const char *p = msg->payload, *end = p + msg->payloadlen;
	const char *ids = memmem(p, (size_t)msg->payloadlen, "\"ids\":[", 7);
	if (!ids)
		return;
	for (p = ids + 7; p < end && *p != ']'; p++) {
		if (*p != '"')
			continue;
		const char *close = memchr(p + 1, '"', (size_t)(end - p - 1));
		if (!close)
			break;
		ack_one(k, p + 1, (size_t)(close - p - 1), t);
		p = close;
	}
	k->last_ack = t;
}

static int in_flight(const struct kiosk *k)
{
	return k->next - k->acked;
}

static int finished(const struct kiosk *k)
{
	return k->acked >= k->count; /* raw mode: every event published and PUBACKed */
}

/* Publish whatever the window (refilled once half of it is free) and the pacing allow. */
static void fill(struct kiosk *k, double started, double t)
{
	int limit = gateway_mode ? window : k->count;
	if (gateway_mode && rate <= 0 && in_flight(k) > window / 2)
		return;
	int due = rate > 0 ? (int)((t - started) * rate) + 1 : k->count;
	if (due > k->count)
		due = k->count;
	int room = limit - in_flight(k);
	if (room > due - k->next)
		room = due - k->next;
	if (room > 0 && k->next == 0)
		k->first_publish = t;
	for (; room > 0; room--, k->next++) {
		const char *payload = k->payloads[k->next];
		k->sent[k->next] = t;
		int rc = mosquitto_publish(k->mosq, NULL, k->topic, (int)strlen(payload), payload, 1,
					   false);
		if (rc != MOSQ_ERR_SUCCESS)
			die("publish", k, mosquitto_strerror(rc));
	}
}

static void connect_all(const char *host, int port)
{
	for (int i = 0; i < n_kiosks; i++) {
		struct kiosk *k = &kiosks[i];
		k->mosq = mosquitto_new(k->id, true, k);
		if (!k->mosq)
			die("mosquitto_new", k, strerror(errno));
		/* In libmosquitto 2.0 this is the in-flight limit for MQTT 3.1.1 too (what the
		 * deprecated mosquitto_max_inflight_messages_set sets). */
		int rc = mosquitto_int_option(k->mosq, MOSQ_OPT_SEND_MAXIMUM, window);
		if (rc != MOSQ_ERR_SUCCESS)
			die("in-flight limit", k, mosquitto_strerror(rc));
		mosquitto_connect_callback_set(k->mosq, on_connect);
		mosquitto_subscribe_callback_set(k->mosq, on_subscribe);
		if (gateway_mode)
			mosquitto_message_callback_set(k->mosq, on_message);
		else
			mosquitto_publish_callback_set(k->mosq, on_publish);
		rc = mosquitto_connect(k->mosq, host, port, 60);
		if (rc != MOSQ_ERR_SUCCESS)
			die("connect", k, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
	}
}

/* One poll() over stdin and every connection, then libmosquitto's read/write/misc for each.
 * Returns a line read from stdin, or NULL. */
static char *service(struct pollfd *fds, int timeout_ms)
{
	fds[0] = (struct pollfd){.fd = 0, .events = POLLIN};
	for (int i = 0; i < n_kiosks; i++) {
		struct mosquitto *m = kiosks[i].mosq;
		fds[i + 1] = (struct pollfd){.fd = mosquitto_socket(m),
					     .events = POLLIN | (mosquitto_want_write(m) ? POLLOUT : 0)};
	}
	if (poll(fds, (nfds_t)n_kiosks + 1, timeout_ms) < 0 && errno != EINTR)
		die("poll", NULL, strerror(errno));
	for (int i = 0; i < n_kiosks; i++) {
		struct kiosk *k = &kiosks[i];
		int rc = MOSQ_ERR_SUCCESS;
		if (fds[i + 1].revents & (POLLIN | POLLERR | POLLHUP))
			rc = mosquitto_loop_read(k->mosq, 1);
		if (rc == MOSQ_ERR_SUCCESS && (fds[i + 1].revents & POLLOUT))
			rc = mosquitto_loop_write(k->mosq, 1);
		if (rc == MOSQ_ERR_SUCCESS)
			rc = mosquitto_loop_misc(k->mosq);
		if (rc != MOSQ_ERR_SUCCESS)
			die("connection lost", k,
			    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
	}
	return (fds[0].revents & (POLLIN | POLLHUP)) ? read_line() : NULL;
}

static void expect(const char *line, const char *command)
{
	if (strcmp(line, command) != 0)
		die("expected a command", NULL, line);
}

static void run(struct pollfd *fds)
{
	double started = now(), last_progress = started;
	int last = 0, all_done = 0;
	while (!all_done) {
		double t = now(), next_due = t + 1.0;
		int progress = 0;
		all_done = 1;
		for (int i = 0; i < n_kiosks; i++) {
			struct kiosk *k = &kiosks[i];
			fill(k, started, t);
			progress += k->next + k->acked;
			all_done &= finished(k);
			if (rate > 0 && k->next < k->count && in_flight(k) < window &&
			    started + k->next / rate < next_due)
				next_due = started + k->next / rate;
		}
		if (progress != last)
			last = progress, last_progress = t;
		else if (t - last_progress > STALL_S)
			break; /* the parent sees acked < published */
		if (!all_done) {
			int wait_ms = next_due > t ? (int)((next_due - t) * 1000) + 1 : 0;
			char *line = service(fds, wait_ms);
			if (line)
				die("unexpected command while running", NULL, line);
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 6 || (strcmp(argv[5], "gateway") != 0 && strcmp(argv[5], "raw") != 0)) {
		fprintf(stderr, "usage: %s HOST PORT WINDOW RATE_PER_KIOSK gateway|raw\n", argv[0]);
		return 2;
	}
	window = atoi(argv[3]);
	rate = atof(argv[4]);
	gateway_mode = strcmp(argv[5], "gateway") == 0;
	read_plan();
	mosquitto_lib_init();
	connect_all(argv[1], atoi(argv[2]));
	struct pollfd *fds = calloc((size_t)n_kiosks + 1, sizeof *fds);
	double deadline = now() + STALL_S;
	for (int ready = 0; ready < n_kiosks;) {
		if (now() > deadline)
			die("connecting", NULL, "not every connection is ready after 30 s");
		if (service(fds, 100))
			die("connecting", NULL, "a command before ready");
		ready = 0;
		for (int i = 0; i < n_kiosks; i++)
			ready += kiosks[i].ready;
	}
	puts("ready");
	fflush(stdout);
	char *line;
	while (!(line = service(fds, 1000)))
		;
	expect(line, "go");
	run(fds);
	puts("done");
	fflush(stdout);
	while (!(line = service(fds, 1000)))
		;
	expect(line, "stop");
	for (int i = 0; i < n_kiosks; i++) {
		struct kiosk *k = &kiosks[i];
		int n = 0;
		mosquitto_disconnect(k->mosq);
		for (int e = 0; e < k->count; e++)
			n += k->latency[e] >= 0;
		printf("result %d %d %.9f %.9f %d\n", k->next, k->acked, k->first_publish, k->last_ack,
		       n);
		for (int e = 0; e < k->count; e++)
			if (k->latency[e] >= 0)
				printf(" %.9f", k->latency[e]);
		putchar('\n');
	}
	fflush(stdout);
	return 0;
}

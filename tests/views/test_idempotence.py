"""The same events applied again, in other batches, or in reverse: the views do not move."""

from __future__ import annotations

import random

from retailsync.cdc.tables import own_tables
from retailsync.db.database import Database
from retailsync.views import rebuild
from tests.cdc.test_capture import capturing
from tests.views.harness import World, apply_in_chunks, dump_views, logged_events, rebuilt


class TestIdempotence:
    """Redelivery, duplicates and reordering leave the views as a single in-order pass does."""

    async def test_redelivered_duplicated_reordered(self, cdc_db: Database, cdc_dsn: str) -> None:
        rng = random.Random(11)
        world = World(cdc_db, rng)
        await world.setup()
        async with capturing(cdc_db, cdc_dsn, own_tables()) as log:
            await world.run(80)
            events = await logged_events(log, cdc_db)
        # From views built before any of it: the locations only (setup ran before capture).
        async with cdc_db.connection() as conn:
            await conn.execute("DELETE FROM view_categories")
            await rebuild(conn)
            await conn.execute(
                "DELETE FROM view_products; DELETE FROM view_atp_location; "
                "DELETE FROM view_atp_region; DELETE FROM view_atp; "
                "DELETE FROM view_category_products; DELETE FROM view_facets; "
                "DELETE FROM view_categories"
            )
        empty = await dump_views(cdc_db)
        await apply_in_chunks(cdc_db, events, 5)
        once = await dump_views(cdc_db)
        assert once == await rebuilt(cdc_db)
        await apply_in_chunks(cdc_db, events, len(events))  # everything delivered again
        assert await dump_views(cdc_db) == once
        await apply_in_chunks(cdc_db, events[::-1], 1)  # again, newest first
        assert await dump_views(cdc_db) == once
        shuffled = events * 2
        rng.shuffle(shuffled)
        await apply_in_chunks(cdc_db, shuffled, 9)
        assert await dump_views(cdc_db) == once
        # And from empty views, newest first, duplicated, in odd batches.
        async with cdc_db.connection() as conn:
            await conn.execute(
                "DELETE FROM view_products; DELETE FROM view_atp_location; "
                "DELETE FROM view_atp_region; DELETE FROM view_atp; "
                "DELETE FROM view_category_products; DELETE FROM view_facets; "
                "DELETE FROM view_categories"
            )
        assert await dump_views(cdc_db) == empty
        await apply_in_chunks(cdc_db, [e for e in events[::-1] for _ in (1, 2)], 3)
        assert await dump_views(cdc_db) == once

"""SQLAlchemy 2 through pgtenant: the psycopg dialect (sync ORM and Core) and the asyncpg
dialect (async engine), each without a pool of its own (NullPool) and with its QueuePool."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Engine, NullPool, QueuePool, create_engine, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import AsyncAdaptedQueuePool

from tests.drivers.tenancy import SEED_ROWS, TENANTS, WHO_AM_I, own_view
from tests.proxy_harness import ThreadedProxy, token


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[str] = mapped_column(server_default=text(
        "current_setting('app.current_tenant', true)"))
    name: Mapped[str]


def url(proxy: ThreadedProxy, tenant: str, dialect: str) -> str:
    return f"postgresql+{dialect}://tester:{token(tenant)}@127.0.0.1:{proxy.port}/app"


def sync_engine(proxy: ThreadedProxy, tenant: str, pooling: str) -> Engine:
    pool: dict[str, Any] = ({"poolclass": NullPool} if pooling == "NullPool" else
                            {"poolclass": QueuePool, "pool_size": 2, "pool_pre_ping": True})
    return create_engine(url(proxy, tenant, "psycopg"), connect_args={"sslmode": "disable"},
                         **pool)


def async_engine(proxy: ThreadedProxy, tenant: str, pooling: str) -> AsyncEngine:
    pool: dict[str, Any] = ({"poolclass": NullPool} if pooling == "NullPool" else
                            {"poolclass": AsyncAdaptedQueuePool, "pool_size": 2,
                             "pool_pre_ping": True})
    return create_async_engine(url(proxy, tenant, "asyncpg"), connect_args={"ssl": False},
                               **pool)


@pytest.mark.parametrize("pooling", ["NullPool", "QueuePool"])
def test_psycopg_dialect_orm_and_core(driver_proxy: ThreadedProxy, pooling: str) -> None:
    engines = {t: sync_engine(driver_proxy, t, pooling) for t in TENANTS}
    try:
        for round_ in range(3):
            for tenant, engine in engines.items():
                with Session(engine) as session:  # ORM: unit of work, RETURNING ids
                    session.add_all([Item(name=f"{tenant}-orm-{round_}-{n}") for n in range(2)])
                    session.commit()
                    mine = session.scalars(select(Item).order_by(Item.id)).all()
                    assert {item.tenant_id for item in mine} == {tenant}
                    assert len(mine) == SEED_ROWS + 3 * round_ + 2
                    mine[0].name = f"{tenant}-renamed-{round_}"
                    session.commit()
                with engine.begin() as conn:  # Core: executemany of a bulk insert
                    conn.execute(insert(Item.__table__),
                                 [{"name": f"{tenant}-core-{round_}"}])
                    others = conn.execute(select(func.count()).select_from(Item)
                                          .where(Item.tenant_id != tenant)).scalar_one()
                    assert others == 0
        for tenant, engine in engines.items():
            with engine.connect() as conn:
                assert tuple(conn.execute(text(WHO_AM_I)).one()) == own_view(tenant,
                                                                             SEED_ROWS + 9)
    finally:
        for engine in engines.values():
            engine.dispose()


@pytest.mark.parametrize("pooling", ["NullPool", "QueuePool"])
def test_asyncpg_dialect_async_engine(driver_proxy: ThreadedProxy, pooling: str) -> None:
    async def tenant_work(engine: AsyncEngine, tenant: str) -> tuple[Any, ...]:
        for round_ in range(3):
            async with AsyncSession(engine) as session:
                session.add(Item(name=f"{tenant}-async-{round_}"))
                await session.commit()
                names = (await session.scalars(
                    select(Item.name).where(Item.name.like("%-async-%")))).all()
                assert sorted(names) == [f"{tenant}-async-{r}" for r in range(round_ + 1)]
            async with engine.connect() as conn:  # Core, a prepared statement per query
                for n in range(3):
                    got = await conn.execute(text(
                        "SELECT current_setting('app.current_tenant'), CAST(:n AS int)"), {"n": n})
                    assert tuple(got.one()) == (tenant, n)
        async with engine.connect() as conn:
            return tuple((await conn.execute(text(WHO_AM_I))).one())

    async def main() -> list[tuple[Any, ...]]:
        engines = [async_engine(driver_proxy, t, pooling) for t in TENANTS]
        try:
            return await asyncio.gather(*[tenant_work(e, t) for e, t in zip(engines, TENANTS,
                                                                             strict=True)])
        finally:
            await asyncio.gather(*[e.dispose() for e in engines])

    assert asyncio.run(main()) == [own_view(t, SEED_ROWS + 3) for t in TENANTS]

import { ArgumentsHost, Catch, ForbiddenException } from '@nestjs/common';
import { BaseExceptionFilter } from '@nestjs/core';

const INSUFFICIENT_PRIVILEGE = '42501';

/**
 * PostgreSQL's SQLSTATE behind a Prisma error: @prisma/adapter-pg keeps it as
 * `originalCode` on the DriverAdapterError's cause, which the client either throws as is
 * or wraps in a PrismaClientKnownRequestError (`meta.driverAdapterError`).
 */
function sqlState(error: unknown): string | undefined {
  let e: unknown = error;
  for (let depth = 0; e !== null && typeof e === 'object' && depth < 5; depth++) {
    const { originalCode, meta, cause } = e as Record<string, unknown>;
    if (typeof originalCode === 'string') return originalCode;
    const wrapped = (meta as Record<string, unknown> | undefined)?.driverAdapterError;
    e = wrapped ?? cause;
  }
  return undefined;
}

/**
 * A row the tenant may not write (the policy's WITH CHECK) or a statement pgtenant's
 * guard refuses: both are SQLSTATE 42501, answered 403 instead of 500.
 */
@Catch()
export class RowLevelSecurityFilter extends BaseExceptionFilter {
  catch(exception: unknown, host: ArgumentsHost): void {
    if (sqlState(exception) === INSUFFICIENT_PRIVILEGE) {
      super.catch(new ForbiddenException('refused by the database (row-level security)'), host);
      return;
    }
    super.catch(exception, host);
  }
}
